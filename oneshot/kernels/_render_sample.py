"""The per-sample math of the render_triplane Triton kernels (oneshot.kernels.render): a sample's point, its
tri-plane features, EG3D's decoder on them, and the decoder's weights as tiles.

Tiles: BLOCK_R rays x BC channels (C padded to a power of two >= 16), BH hidden units (>= 16), BCO colour
channels (Co = out_channels, >= 16). The density is not a column of the second layer's product: it is
<a, w2[0]> + b2[0], a row reduction beside the [BLOCK_R, BH] x [BH, BCO] colour product, so the 1 + Co outputs
are never padded to the next power of two (33 -> 64 for the paper's decoder).

Precision: every tl.dot is 3xTF32 (``input_precision="tf32x3"``): on tensor cores, each float32 operand split into
a TF32 high part and a TF32 remainder, and the three significant partial products summed in float32. That keeps
the float32 contract of the other backends (outputs and gradients within float32 rounding of the reference, as
tests/test_triton.py pins at rtol 3e-5 x a small factor), which plain TF32 (10 mantissa bits) does not: in a CPU
emulation on a scene with the paper decoder's widths (benchmarks/tf32_precision.py, results in
benchmarks/results/tf32_precision.md) TF32 products move the features by up to 8e-5 and the gradients by up to
4.5e-4 of their largest value, 1000-3000x float32's own error, while 3xTF32 stays at float32's. 16-bit planes
are sampled into float32 features, so they take the same path (the contract computes them in float32; bf16
operands would need a 16-bit tolerance there). Triton's interpreter computes every tl.dot in float32 whatever
the precision asked, so only a GPU run shows the difference.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._common import log1p, taps


@triton.jit
def softplus(m):
    sp = tl.maximum(m, 0.0) + log1p(tl.exp(-tl.abs(m)))
    return tl.where(m > 20.0, m, sp)


@triton.jit
def sigmoid(m):
    en = tl.exp(-tl.abs(m))
    return tl.where(m >= 0.0, 1.0, en) / (1.0 + en)


@triton.jit
def dot(a, b):
    """a [M, K] x b [K, N] in float32 on tensor cores, 3xTF32 (see the module docstring)."""
    return tl.dot(a, b, input_precision="tf32x3")


@triton.jit
def _coord(px, py, pz, A: tl.constexpr):
    if A == 0:
        return px
    elif A == 1:
        return py
    else:
        return pz


@triton.jit
def plane_taps(px, py, pz, pl: tl.constexpr, scale, W, H, A00: tl.constexpr, A01: tl.constexpr,
               A10: tl.constexpr, A11: tl.constexpr, A20: tl.constexpr, A21: tl.constexpr):
    """The bilinear taps of plane `pl` at the points [BLOCK_R] (its coordinate pair from the axes)."""
    if pl == 0:
        u = _coord(px, py, pz, A00)
        v = _coord(px, py, pz, A01)
    elif pl == 1:
        u = _coord(px, py, pz, A10)
        v = _coord(px, py, pz, A11)
    else:
        u = _coord(px, py, pz, A20)
        v = _coord(px, py, pz, A21)
    return taps(u * scale, v * scale, W, H)


@triton.jit
def tap(x0, y0, tx, ty, ok, q: tl.constexpr, W, H, rmask):
    """Tap q (0: top-left, 1: top-right, 2: bottom-left, 3: bottom-right): x, y, weight, inside."""
    x = x0 + (q % 2)
    y = y0 + (q // 2)
    wx = tx if q % 2 == 1 else 1.0 - tx
    wy = ty if q // 2 == 1 else 1.0 - ty
    return x, y, wx * wy, ok & (x >= 0) & (x < W) & (y >= 0) & (y < H) & rmask


@triton.jit
def _point(o_ptr, d_ptr, t_ptr, rays64, rmask, S, k):
    t = tl.load(t_ptr + rays64 * S + k, mask=rmask, other=0.0)
    px = tl.load(o_ptr + rays64 * 3, mask=rmask, other=0.0) + t * tl.load(d_ptr + rays64 * 3, mask=rmask, other=0.0)
    py = tl.load(o_ptr + rays64 * 3 + 1, mask=rmask, other=0.0) + t * tl.load(d_ptr + rays64 * 3 + 1, mask=rmask,
                                                                              other=0.0)
    pz = tl.load(o_ptr + rays64 * 3 + 2, mask=rmask, other=0.0) + t * tl.load(d_ptr + rays64 * 3 + 2, mask=rmask,
                                                                              other=0.0)
    return px, py, pz, t


@triton.jit
def _features(pl_ptr, b64, px, py, pz, rmask, c, C, H, W, scale, A00: tl.constexpr, A01: tl.constexpr,
              A10: tl.constexpr, A11: tl.constexpr, A20: tl.constexpr, A21: tl.constexpr, BLOCK_R: tl.constexpr,
              BC: tl.constexpr):
    """[BLOCK_R, BC] mean over the three planes of the bilinear samples (channels-last planes)."""
    f = tl.zeros((BLOCK_R, BC), dtype=tl.float32)
    cmask = c < C
    for pl in tl.static_range(3):
        x0, y0, tx, ty, ok = plane_taps(px, py, pz, pl, scale, W, H, A00, A01, A10, A11, A20, A21)
        for q in tl.static_range(4):
            x, y, wq, inside = tap(x0, y0, tx, ty, ok, q, W, H, rmask)
            row = ((b64 * 3 + pl) * H + y.to(tl.int64)) * W + x.to(tl.int64)
            vals = tl.load(pl_ptr + row[:, None] * C + c[None, :], mask=inside[:, None] & cmask[None, :], other=0.0)
            f += wq[:, None] * vals.to(tl.float32)
    return f / 3.0


@triton.jit
def weights(w1_ptr, b1_ptr, w2_ptr, b2_ptr, C, Hd, Co, BC: tl.constexpr, BH: tl.constexpr, BCO: tl.constexpr):
    """The decoder as zero-padded tiles: w1 [BH, BC], b1 [BH]; the colour rows of the second layer w2c [BCO, BH]
    (w2[1:]), b2c [BCO] (b2[1:]); the density row w2s [BH] (w2[0]) and b2s (b2[0], a scalar)."""
    c = tl.arange(0, BC)
    j = tl.arange(0, BH)
    oc = tl.arange(0, BCO)
    w1 = tl.load(w1_ptr + j[:, None] * C + c[None, :], mask=(j < Hd)[:, None] & (c < C)[None, :], other=0.0)
    b1 = tl.load(b1_ptr + j, mask=j < Hd, other=0.0)
    w2c = tl.load(w2_ptr + (1 + oc)[:, None] * Hd + j[None, :], mask=(oc < Co)[:, None] & (j < Hd)[None, :],
                  other=0.0)
    b2c = tl.load(b2_ptr + 1 + oc, mask=oc < Co, other=0.0)
    w2s = tl.load(w2_ptr + j, mask=j < Hd, other=0.0)
    b2s = tl.load(b2_ptr)
    return w1, b1, w2c, b2c, w2s, b2s


@triton.jit
def sample(pl_ptr, o_ptr, d_ptr, t_ptr, rays64, b64, rmask, S, k, c, oc, C, H, W, Co, scale, half_box, w1t, b1, w2ct,
           b2c, w2s, b2s, CLIP: tl.constexpr, A00: tl.constexpr, A01: tl.constexpr, A10: tl.constexpr,
           A11: tl.constexpr, A20: tl.constexpr, A21: tl.constexpr, BLOCK_R: tl.constexpr, BC: tl.constexpr):
    """Sample k of the block's rays: the point (px, py, pz) and depth t [BLOCK_R]; its features f [BLOCK_R, BC];
    the decoder's pre-activation h and activation a [BLOCK_R, BH]; the colour logits y [BLOCK_R, BCO]; the raw
    density sig [BLOCK_R] (-1e4 outside the box with CLIP); the colour col [BLOCK_R, BCO] (zero past Co); and
    whether the point is inside the box (all True without CLIP)."""
    px, py, pz, t = _point(o_ptr, d_ptr, t_ptr, rays64, rmask, S, k)
    f = _features(pl_ptr, b64, px, py, pz, rmask, c, C, H, W, scale, A00, A01, A10, A11, A20, A21, BLOCK_R, BC)
    h = dot(f, w1t) + b1[None, :]
    a = softplus(h)
    y = dot(a, w2ct) + b2c[None, :]
    sig = tl.sum(a * w2s[None, :], axis=1) + b2s
    inside = (tl.abs(px) <= half_box) & (tl.abs(py) <= half_box) & (tl.abs(pz) <= half_box)
    if CLIP:
        sig = tl.where(inside, sig, -1e4)
    else:
        inside = rmask | True
    col = tl.where((oc < Co)[None, :], sigmoid(y) * 1.002 - 0.001, 0.0)
    return px, py, pz, t, f, h, a, y, sig, col, inside
