"""Triton kernels of render_triplane (tri-plane taps + EG3D's decoder + ray_march, fused) and its backward, with
host launchers.

One program owns BLOCK_R rays and walks their samples in order. Per sample: the 12 taps of each ray as
[BLOCK_R, C] gathers from the channels-last planes, the decoder as two ``tl.dot``s over the block's rays
([BLOCK_R, C] x [C, hidden], [BLOCK_R, hidden] x [hidden, 1 + Co], IEEE float32), then the interval it closes
with the previous sample is composited (the midpoint rule of ray_march). The backward keeps four float32
scalars per sample in an [R, 4, S] scratch (raw density, <grad_features, colour>, transmittance, d loss / d
interval density) for the reverse sweep, recomputes the decoder per sample and adds its gradients and the planes'
gradient with atomics. float32 only. Kernels and launchers only: registration and autograd live in oneshot.ops.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import launch, next_pow2
from .raymarch import _log1p
from .triplane import _taps

__all__ = ["render_forward", "render_backward"]


@triton.jit
def _softplus(m):
    sp = tl.maximum(m, 0.0) + _log1p(tl.exp(-tl.abs(m)))
    return tl.where(m > 20.0, m, sp)


@triton.jit
def _sigmoid(m):
    en = tl.exp(-tl.abs(m))
    return tl.where(m >= 0.0, 1.0, en) / (1.0 + en)


@triton.jit
def _coord(px, py, pz, A: tl.constexpr):
    if A == 0:
        return px
    elif A == 1:
        return py
    else:
        return pz


@triton.jit
def _plane_taps(px, py, pz, pl: tl.constexpr, scale, W, H, A00: tl.constexpr, A01: tl.constexpr,
                A10: tl.constexpr, A11: tl.constexpr, A20: tl.constexpr, A21: tl.constexpr):
    """The bilinear taps of plane `pl` at the points (its coordinate pair from the axes)."""
    if pl == 0:
        u = _coord(px, py, pz, A00)
        v = _coord(px, py, pz, A01)
    elif pl == 1:
        u = _coord(px, py, pz, A10)
        v = _coord(px, py, pz, A11)
    else:
        u = _coord(px, py, pz, A20)
        v = _coord(px, py, pz, A21)
    return _taps(u * scale, v * scale, W, H)


@triton.jit
def _tap(x0, y0, tx, ty, ok, q: tl.constexpr, W, H, rmask):
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
        x0, y0, tx, ty, ok = _plane_taps(px, py, pz, pl, scale, W, H, A00, A01, A10, A11, A20, A21)
        for q in tl.static_range(4):
            x, y, wq, inside = _tap(x0, y0, tx, ty, ok, q, W, H, rmask)
            row = ((b64 * 3 + pl) * H + y.to(tl.int64)) * W + x.to(tl.int64)
            vals = tl.load(pl_ptr + row[:, None] * C + c[None, :], mask=inside[:, None] & cmask[None, :], other=0.0)
            f += wq[:, None] * vals.to(tl.float32)
    return f / 3.0


@triton.jit
def _decode(f, w1t, b1, w2t, b2):
    h = tl.dot(f, w1t, input_precision="ieee") + b1[None, :]
    a = _softplus(h)
    y = tl.dot(a, w2t, input_precision="ieee") + b2[None, :]
    return h, a, y


@triton.jit
def _sample(pl_ptr, o_ptr, d_ptr, t_ptr, rays64, b64, rmask, S, k, c, o, C, H, W, O, scale, half_box, w1t, b1, w2t,
            b2, CLIP: tl.constexpr, A00: tl.constexpr, A01: tl.constexpr, A10: tl.constexpr, A11: tl.constexpr,
            A20: tl.constexpr, A21: tl.constexpr, BLOCK_R: tl.constexpr, BC: tl.constexpr):
    """Sample k of the block's rays: the point, its features f, the decoder's h, a, y, the raw density (-1e4
    outside the box with CLIP) and the colour tile (zero outside the colour columns 1 .. O - 1)."""
    px, py, pz, t = _point(o_ptr, d_ptr, t_ptr, rays64, rmask, S, k)
    f = _features(pl_ptr, b64, px, py, pz, rmask, c, C, H, W, scale, A00, A01, A10, A11, A20, A21, BLOCK_R, BC)
    h, a, y = _decode(f, w1t, b1, w2t, b2)
    sig = tl.sum(tl.where((o == 0)[None, :], y, 0.0), axis=1)
    inside = (tl.abs(px) <= half_box) & (tl.abs(py) <= half_box) & (tl.abs(pz) <= half_box)
    if CLIP:
        sig = tl.where(inside, sig, -1e4)
    else:
        inside = rmask | True
    col = tl.where(((o >= 1) & (o < O))[None, :], _sigmoid(y) * 1.002 - 0.001, 0.0)
    return px, py, pz, t, f, h, a, y, sig, col, inside


@triton.jit
def _weights(w1_ptr, b1_ptr, w2_ptr, b2_ptr, C, Hd, O, BC: tl.constexpr, BH: tl.constexpr, BO: tl.constexpr):
    """w1^T [BC, BH], b1 [BH], w2^T [BH, BO], b2 [BO] (zero padded), and w1 [BH, BC], w2 [BO, BH]."""
    c = tl.arange(0, BC)
    j = tl.arange(0, BH)
    o = tl.arange(0, BO)
    m1 = (j < Hd)[:, None] & (c < C)[None, :]
    w1 = tl.load(w1_ptr + j[:, None] * C + c[None, :], mask=m1, other=0.0)
    m2 = (o < O)[:, None] & (j < Hd)[None, :]
    w2 = tl.load(w2_ptr + o[:, None] * Hd + j[None, :], mask=m2, other=0.0)
    b1 = tl.load(b1_ptr + j, mask=j < Hd, other=0.0)
    b2 = tl.load(b2_ptr + o, mask=o < O, other=0.0)
    return tl.trans(w1), b1, tl.trans(w2), b2, w1, w2


@triton.jit
def _forward_kernel(pl_ptr, o_ptr, d_ptr, t_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, feat_ptr, depth_ptr, op_ptr,
                    wts_ptr, N, R, S, C, H, W, Hd, O, scale, half_box, bias, CLIP: tl.constexpr,
                    A00: tl.constexpr, A01: tl.constexpr, A10: tl.constexpr, A11: tl.constexpr, A20: tl.constexpr,
                    A21: tl.constexpr, BLOCK_R: tl.constexpr, BC: tl.constexpr, BH: tl.constexpr,
                    BO: tl.constexpr):
    rays = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rays < N
    rays64 = rays.to(tl.int64)
    b64 = rays64 // R
    c = tl.arange(0, BC)
    o = tl.arange(0, BO)
    w1t, b1, w2t, b2, w1, w2 = _weights(w1_ptr, b1_ptr, w2_ptr, b2_ptr, C, Hd, O, BC, BH, BO)
    is_col = (o >= 1) & (o < O)
    acc = tl.zeros((BLOCK_R, BO), dtype=tl.float32)
    prev = tl.zeros((BLOCK_R, BO), dtype=tl.float32)
    prev_sig = tl.zeros((BLOCK_R,), dtype=tl.float32)
    prev_t = tl.zeros((BLOCK_R,), dtype=tl.float32)
    trans = tl.full((BLOCK_R,), 1.0, tl.float32)
    op = tl.zeros((BLOCK_R,), dtype=tl.float32)
    num = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for k in range(0, S):
        px, py, pz, t, f, h, a, y, sig, col, inside = _sample(
            pl_ptr, o_ptr, d_ptr, t_ptr, rays64, b64, rmask, S, k, c, o, C, H, W, O, scale, half_box, w1t, b1, w2t,
            b2, CLIP, A00, A01, A10, A11, A20, A21, BLOCK_R, BC)
        has = (rays * 0 + k) > 0
        m = (prev_sig + sig) / 2.0 + bias
        alpha = 1.0 - tl.exp(-(_softplus(m) * (t - prev_t)))
        w = tl.where(has, alpha * trans, 0.0)
        trans = tl.where(has, trans * ((1.0 - alpha) + 1e-10), trans)
        op += w
        num += w * ((prev_t + t) / 2.0)
        acc += w[:, None] * ((prev + col) / 2.0)
        tl.store(wts_ptr + rays64 * (S - 1) + k - 1, w, mask=rmask & has)
        prev = col
        prev_sig = sig
        prev_t = t
    fo = tl.maximum(o - 1, 0)
    tl.store(feat_ptr + rays64[:, None] * (O - 1) + fo[None, :], acc, mask=rmask[:, None] & is_col[None, :])
    t_first = tl.load(t_ptr + rays64 * S, mask=rmask, other=0.0)
    t_last = tl.load(t_ptr + rays64 * S + S - 1, mask=rmask, other=0.0)
    hit = op > 0.0
    dd = tl.minimum(tl.maximum(num / tl.where(hit, op, 1.0), t_first), t_last)
    tl.store(depth_ptr + rays64, tl.where(hit, dd, t_last), mask=rmask)
    tl.store(op_ptr + rays64, op, mask=rmask)


@triton.jit
def _backward_kernel(pl_ptr, o_ptr, d_ptr, t_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, gf_ptr, gd_ptr, go_ptr, gw_ptr,
                     scr_ptr, gpl_ptr, gw1_ptr, gb1_ptr, gw2_ptr, gb2_ptr, N, R, S, C, H, W, Hd, O, scale, half_box,
                     bias, CLIP: tl.constexpr, HAS_GF: tl.constexpr, HAS_GD: tl.constexpr, HAS_GO: tl.constexpr,
                     HAS_GW: tl.constexpr, A00: tl.constexpr, A01: tl.constexpr, A10: tl.constexpr,
                     A11: tl.constexpr, A20: tl.constexpr, A21: tl.constexpr, BLOCK_R: tl.constexpr,
                     BC: tl.constexpr, BH: tl.constexpr, BO: tl.constexpr):
    rays = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rays < N
    rays64 = rays.to(tl.int64)
    b64 = rays64 // R
    c = tl.arange(0, BC)
    j = tl.arange(0, BH)
    o = tl.arange(0, BO)
    w1t, b1, w2t, b2, w1, w2 = _weights(w1_ptr, b1_ptr, w2_ptr, b2_ptr, C, Hd, O, BC, BH, BO)
    is_col = (o >= 1) & (o < O)
    fo = tl.maximum(o - 1, 0)
    K = S - 1
    sig_p = scr_ptr + rays64 * 4 * S
    dot_p = sig_p + S
    tr_p = dot_p + S
    dm_p = tr_p + S
    gfr = tl.zeros((BLOCK_R, BO), dtype=tl.float32)
    if HAS_GF:
        gfr = tl.load(gf_ptr + rays64[:, None] * (O - 1) + fo[None, :], mask=rmask[:, None] & is_col[None, :],
                      other=0.0)
    # Pass 1: raw densities and <grad_features, colour> per sample.
    for k in range(0, S):
        px, py, pz, t, f, h, a, y, sig, col, inside = _sample(
            pl_ptr, o_ptr, d_ptr, t_ptr, rays64, b64, rmask, S, k, c, o, C, H, W, O, scale, half_box, w1t, b1, w2t,
            b2, CLIP, A00, A01, A10, A11, A20, A21, BLOCK_R, BC)
        tl.store(sig_p + k, sig, mask=rmask)
        tl.store(dot_p + k, tl.sum(gfr * col, axis=1), mask=rmask)
    # The transmittance scan.
    trans = tl.full((BLOCK_R,), 1.0, tl.float32)
    op = tl.zeros((BLOCK_R,), dtype=tl.float32)
    num = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for k in range(0, K):
        s0 = tl.load(sig_p + k, mask=rmask, other=0.0)
        s1 = tl.load(sig_p + k + 1, mask=rmask, other=0.0)
        t0 = tl.load(t_ptr + rays64 * S + k, mask=rmask, other=0.0)
        t1 = tl.load(t_ptr + rays64 * S + k + 1, mask=rmask, other=0.0)
        alpha = 1.0 - tl.exp(-(_softplus((s0 + s1) / 2.0 + bias) * (t1 - t0)))
        tl.store(tr_p + k, trans, mask=rmask)
        w = alpha * trans
        op += w
        num += w * ((t0 + t1) / 2.0)
        trans = trans * ((1.0 - alpha) + 1e-10)
    t_first = tl.load(t_ptr + rays64 * S, mask=rmask, other=0.0)
    t_last = tl.load(t_ptr + rays64 * S + K, mask=rmask, other=0.0)
    g_op = tl.zeros((BLOCK_R,), dtype=tl.float32)
    if HAS_GO:
        g_op = tl.load(go_ptr + rays64, mask=rmask, other=0.0)
    depth_coef = tl.zeros((BLOCK_R,), dtype=tl.float32)
    depth_val = tl.zeros((BLOCK_R,), dtype=tl.float32)
    if HAS_GD:
        hit = op > 0.0
        dv = num / tl.where(hit, op, 1.0)
        passes = hit & (dv >= t_first) & (dv <= t_last)
        depth_val = tl.where(passes, dv, 0.0)
        depth_coef = tl.where(passes, tl.load(gd_ptr + rays64, mask=rmask, other=0.0) / tl.where(hit, op, 1.0), 0.0)
    # The reverse sweep: d loss / d interval density.
    suffix = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for i in range(0, K):
        k = K - 1 - i
        s0 = tl.load(sig_p + k, mask=rmask, other=0.0)
        s1 = tl.load(sig_p + k + 1, mask=rmask, other=0.0)
        t0 = tl.load(t_ptr + rays64 * S + k, mask=rmask, other=0.0)
        t1 = tl.load(t_ptr + rays64 * S + k + 1, mask=rmask, other=0.0)
        mm = (s0 + s1) / 2.0 + bias
        delta = t1 - t0
        e = tl.exp(-(_softplus(mm) * delta))
        alpha = 1.0 - e
        G = g_op + depth_coef * ((t0 + t1) / 2.0 - depth_val)
        G += (tl.load(dot_p + k, mask=rmask, other=0.0) + tl.load(dot_p + k + 1, mask=rmask, other=0.0)) / 2.0
        if HAS_GW:
            G += tl.load(gw_ptr + rays64 * K + k, mask=rmask, other=0.0)
        d_alpha = tl.load(tr_p + k, mask=rmask, other=0.0) * (G - suffix)
        suffix = G * alpha + ((1.0 - alpha) + 1e-10) * suffix
        slope = tl.where(mm > 20.0, 1.0, _sigmoid(mm))
        tl.store(dm_p + k, d_alpha * delta * e * slope, mask=rmask)
    # Pass 2: the decoder's backward and the scatter, sample by sample.
    g_w1 = tl.zeros((BH, BC), dtype=tl.float32)
    g_b1 = tl.zeros((BH,), dtype=tl.float32)
    g_w2 = tl.zeros((BO, BH), dtype=tl.float32)
    g_b2 = tl.zeros((BO,), dtype=tl.float32)
    for k in range(0, S):
        px, py, pz, t, f, h, a, y, sig, col, inside = _sample(
            pl_ptr, o_ptr, d_ptr, t_ptr, rays64, b64, rmask, S, k, c, o, C, H, W, O, scale, half_box, w1t, b1, w2t,
            b2, CLIP, A00, A01, A10, A11, A20, A21, BLOCK_R, BC)
        # omega_k = (w_{k-1} + w_k) / 2 and d loss / d raw density_k = (dm_{k-1} + dm_k) / 2
        omega = tl.zeros((BLOCK_R,), dtype=tl.float32)
        gs = tl.zeros((BLOCK_R,), dtype=tl.float32)
        for dq in tl.static_range(2):
            q = k - 1 + dq
            valid = rmask & ((rays * 0 + q) >= 0) & ((rays * 0 + q) < K)
            s0 = tl.load(sig_p + q, mask=valid, other=0.0)
            s1 = tl.load(sig_p + q + 1, mask=valid, other=0.0)
            t0 = tl.load(t_ptr + rays64 * S + q, mask=valid, other=0.0)
            t1 = tl.load(t_ptr + rays64 * S + q + 1, mask=valid, other=0.0)
            alpha = 1.0 - tl.exp(-(_softplus((s0 + s1) / 2.0 + bias) * (t1 - t0)))
            omega += tl.where(valid, alpha * tl.load(tr_p + q, mask=valid, other=0.0), 0.0) / 2.0
            gs += tl.load(dm_p + q, mask=valid, other=0.0) / 2.0
        gs = tl.where(inside, gs, 0.0)
        sg = _sigmoid(y)
        gy = tl.where(is_col[None, :], gfr * omega[:, None] * 1.002 * sg * (1.0 - sg), 0.0)
        gy = tl.where((o == 0)[None, :], gs[:, None], gy)
        gy = tl.where(rmask[:, None], gy, 0.0)
        g_b2 += tl.sum(gy, axis=0)
        g_w2 += tl.dot(tl.trans(gy), a, input_precision="ieee")
        ga = tl.dot(gy, w2, input_precision="ieee")
        gh = ga * tl.where(h > 20.0, 1.0, _sigmoid(h))
        g_b1 += tl.sum(gh, axis=0)
        g_w1 += tl.dot(tl.trans(gh), f, input_precision="ieee")
        gfeat = tl.dot(gh, w1, input_precision="ieee") / 3.0
        for pl in tl.static_range(3):
            x0, y0, tx, ty, ok = _plane_taps(px, py, pz, pl, scale, W, H, A00, A01, A10, A11, A20, A21)
            for qq in tl.static_range(4):
                x, yy, wq, ins = _tap(x0, y0, tx, ty, ok, qq, W, H, rmask)
                row = ((b64 * 3 + pl) * H + yy.to(tl.int64)) * W + x.to(tl.int64)
                tl.atomic_add(gpl_ptr + row[:, None] * C + c[None, :], wq[:, None] * gfeat,
                              mask=ins[:, None] & (c < C)[None, :])
    tl.atomic_add(gw1_ptr + j[:, None] * C + c[None, :], g_w1, mask=(j < Hd)[:, None] & (c < C)[None, :])
    tl.atomic_add(gb1_ptr + j, g_b1, mask=j < Hd)
    tl.atomic_add(gw2_ptr + o[:, None] * Hd + j[None, :], g_w2, mask=(o < O)[:, None] & (j < Hd)[None, :])
    tl.atomic_add(gb2_ptr + o, g_b2, mask=o < O)


def _blocks(C: int, Hd: int, O: int) -> dict:
    return dict(BLOCK_R=16, BC=max(16, next_pow2(C)), BH=max(16, next_pow2(Hd)), BO=max(16, next_pow2(O)))


def render_forward(planes_cl, origins, dirs, depths, w1, b1, w2, b2, box_warp: float, axes, clip: bool,
                   bias: float):
    """planes_cl [B, 3, H, W, C] contiguous float32; the rest as render_triplane. Returns (features, depth,
    opacity, weights)."""
    B, _, H, W, C = planes_cl.shape
    R, S = depths.shape[1], depths.shape[2]
    Hd, O = w1.shape[0], w2.shape[0]
    N = B * R
    dev = planes_cl.device
    feat = torch.empty(B, R, O - 1, device=dev, dtype=torch.float32)
    depth = torch.empty(B, R, device=dev, dtype=torch.float32)
    opacity = torch.empty(B, R, device=dev, dtype=torch.float32)
    weights = torch.empty(B, R, S - 1, device=dev, dtype=torch.float32)
    if N == 0:
        return feat, depth, opacity, weights
    blk = _blocks(C, Hd, O)
    grid = (triton.cdiv(N, blk["BLOCK_R"]),)
    launch(_forward_kernel)[grid](planes_cl, origins, dirs, depths, w1, b1, w2, b2, feat, depth, opacity, weights, N,
                                  R, S, C, H, W, Hd, O, 2.0 / box_warp, box_warp / 2.0, bias, CLIP=clip,
                                  A00=axes[0], A01=axes[1], A10=axes[2], A11=axes[3], A20=axes[4], A21=axes[5], **blk)
    return feat, depth, opacity, weights


def render_backward(gf, gd, go, gw, planes_cl, origins, dirs, depths, w1, b1, w2, b2, box_warp: float, axes,
                    clip: bool, bias: float):
    """Gradients (planes [B, 3, H, W, C] channels-last, w1, b1, w2, b2) of render_forward."""
    B, _, H, W, C = planes_cl.shape
    R, S = depths.shape[1], depths.shape[2]
    Hd, O = w1.shape[0], w2.shape[0]
    N = B * R
    dev = planes_cl.device
    gpl = torch.zeros(B, 3, H, W, C, device=dev, dtype=torch.float32)
    gw1, gb1 = torch.zeros(Hd, C, device=dev), torch.zeros(Hd, device=dev)
    gw2, gb2 = torch.zeros(O, Hd, device=dev), torch.zeros(O, device=dev)
    if N == 0 or (gf is None and gd is None and go is None and gw is None):
        return gpl, gw1, gb1, gw2, gb2
    scratch = torch.empty(N, 4, S, device=dev, dtype=torch.float32)
    blk = _blocks(C, Hd, O)
    grid = (triton.cdiv(N, blk["BLOCK_R"]),)
    dummy = depths
    launch(_backward_kernel)[grid](
        planes_cl, origins, dirs, depths, w1, b1, w2, b2, dummy if gf is None else gf, dummy if gd is None else gd,
        dummy if go is None else go, dummy if gw is None else gw, scratch, gpl, gw1, gb1, gw2, gb2, N, R, S, C, H, W,
        Hd, O, 2.0 / box_warp, box_warp / 2.0, bias, CLIP=clip, HAS_GF=gf is not None, HAS_GD=gd is not None,
        HAS_GO=go is not None, HAS_GW=gw is not None, A00=axes[0], A01=axes[1], A10=axes[2], A11=axes[3],
        A20=axes[4], A21=axes[5], **blk)
    return gpl, gw1, gb1, gw2, gb2
