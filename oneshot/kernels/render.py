"""Triton kernels of render_triplane (tri-plane taps + EG3D's decoder + ray_march, fused) and its backward, with
host launchers.

One program owns BLOCK_R rays and walks their samples in order. Per sample: the 12 taps of each ray as
[BLOCK_R, C] gathers from the channels-last planes, the decoder on tensor cores as two ``tl.dot``s over the
block's rays ([BLOCK_R, C] x [C, hidden], [BLOCK_R, hidden] x [hidden, Co]; 3xTF32, which keeps the float32
contract) with the density a row reduction beside the second (so 1 + Co outputs are not padded: see
_render_sample), then the interval it closes with the previous sample is composited (the midpoint rule of
ray_march). The backward keeps four float32 scalars per sample in an [R, 4, S] scratch (raw density,
<grad_features, colour>, transmittance, d loss / d interval density) for the reverse sweep, recomputes the
decoder per sample, keeps the decoder's gradients per program in registers and adds them to memory once at the
end, and scatters the planes' gradient with relaxed atomics (sums: nothing is ordered by them). Planes float32
or 16-bit (sampled into float32), everything else float32. Autotuned over BLOCK_R, num_warps and num_stages
per (C, hidden, Co, clip, dtypes); ray, sample and plane sizes are not specialised (see _common). Kernels and
launchers only: registration and autograd live in oneshot.ops.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import autotune, configs, fixed, launch, next_pow2
from ._render_sample import dot, plane_taps, sample, sigmoid, softplus, tap, weights

__all__ = ["render_forward", "render_backward", "FORWARD_CONFIGS", "BACKWARD_CONFIGS"]

# BLOCK_R rays a program (the rows of the decoder's products). Tuned per (C, hidden, Co, clip, dtypes).
FORWARD_CONFIGS = (configs([{"BLOCK_R": 16}], warps=(2, 4)) + configs([{"BLOCK_R": 32}], warps=(4,), stages=(1, 2))
                   + configs([{"BLOCK_R": 64}], warps=(4, 8)))
BACKWARD_CONFIGS = (configs([{"BLOCK_R": 16}], warps=(4,)) + configs([{"BLOCK_R": 32}], warps=(4, 8))
                    + configs([{"BLOCK_R": 64}], warps=(8,)))
_TUNE_KEY = ["C", "Hd", "Co", "CLIP"]


@autotune(FORWARD_CONFIGS, key=_TUNE_KEY)
@triton.jit(do_not_specialize=["N", "R", "S", "H", "W"])
def _forward_kernel(pl_ptr,  # [B, 3, H, W, C] channels-last planes (float32 / float16 / bfloat16)
                    o_ptr, d_ptr,  # [B, R, 3] ray origins, directions
                    t_ptr,  # [B, R, S] sample depths
                    w1_ptr, b1_ptr, w2_ptr, b2_ptr,  # [Hd, C], [Hd], [1 + Co, Hd], [1 + Co]
                    feat_ptr,  # [B, R, Co] out
                    depth_ptr, op_ptr,  # [B, R] out
                    wts_ptr,  # [B, R, S - 1] out
                    N, R, S, C, H, W, Hd, Co, scale, half_box, bias, CLIP: tl.constexpr,
                    A00: tl.constexpr, A01: tl.constexpr, A10: tl.constexpr, A11: tl.constexpr, A20: tl.constexpr,
                    A21: tl.constexpr, BLOCK_R: tl.constexpr, BC: tl.constexpr, BH: tl.constexpr,
                    BCO: tl.constexpr):
    rays = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rays < N
    rays64 = rays.to(tl.int64)
    b64 = rays64 // R
    c = tl.arange(0, BC)
    oc = tl.arange(0, BCO)
    w1, b1, w2c, b2c, w2s, b2s = weights(w1_ptr, b1_ptr, w2_ptr, b2_ptr, C, Hd, Co, BC, BH, BCO)
    w1t = tl.trans(w1)
    w2ct = tl.trans(w2c)
    acc = tl.zeros((BLOCK_R, BCO), dtype=tl.float32)
    prev = tl.zeros((BLOCK_R, BCO), dtype=tl.float32)
    prev_sig = tl.zeros((BLOCK_R,), dtype=tl.float32)
    prev_t = tl.zeros((BLOCK_R,), dtype=tl.float32)
    trans = tl.full((BLOCK_R,), 1.0, tl.float32)
    op = tl.zeros((BLOCK_R,), dtype=tl.float32)
    num = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for k in range(0, S):
        px, py, pz, t, f, h, a, y, sig, col, inside = sample(
            pl_ptr, o_ptr, d_ptr, t_ptr, rays64, b64, rmask, S, k, c, oc, C, H, W, Co, scale, half_box, w1t, b1,
            w2ct, b2c, w2s, b2s, CLIP, A00, A01, A10, A11, A20, A21, BLOCK_R, BC)
        has = (rays * 0 + k) > 0
        m = (prev_sig + sig) / 2.0 + bias
        alpha = 1.0 - tl.exp(-(softplus(m) * (t - prev_t)))
        w = tl.where(has, alpha * trans, 0.0)
        trans = tl.where(has, trans * ((1.0 - alpha) + 1e-10), trans)
        op += w
        num += w * ((prev_t + t) / 2.0)
        acc += w[:, None] * ((prev + col) / 2.0)
        tl.store(wts_ptr + rays64 * (S - 1) + k - 1, w, mask=rmask & has)
        prev = col
        prev_sig = sig
        prev_t = t
    tl.store(feat_ptr + rays64[:, None] * Co + oc[None, :], acc, mask=rmask[:, None] & (oc < Co)[None, :])
    t_first = tl.load(t_ptr + rays64 * S, mask=rmask, other=0.0)
    t_last = tl.load(t_ptr + rays64 * S + S - 1, mask=rmask, other=0.0)
    hit = op > 0.0
    dd = tl.minimum(tl.maximum(num / tl.where(hit, op, 1.0), t_first), t_last)
    tl.store(depth_ptr + rays64, tl.where(hit, dd, t_last), mask=rmask)
    tl.store(op_ptr + rays64, op, mask=rmask)


@autotune(BACKWARD_CONFIGS, key=_TUNE_KEY + ["HAS_GF", "HAS_GD", "HAS_GO", "HAS_GW"],
          reset_to_zero=["gpl_ptr", "gw1_ptr", "gb1_ptr", "gw2_ptr", "gb2_ptr"])
@triton.jit(do_not_specialize=["N", "R", "S", "H", "W"])
def _backward_kernel(pl_ptr,  # [B, 3, H, W, C] channels-last planes
                     o_ptr, d_ptr, t_ptr,  # [B, R, 3], [B, R, 3], [B, R, S]
                     w1_ptr, b1_ptr, w2_ptr, b2_ptr,  # [Hd, C], [Hd], [1 + Co, Hd], [1 + Co]
                     gf_ptr,  # [B, R, Co] grad features (read with HAS_GF)
                     gd_ptr, go_ptr,  # [B, R] grad depth, grad opacity (read with HAS_GD, HAS_GO)
                     gw_ptr,  # [B, R, S - 1] grad weights (read with HAS_GW)
                     scr_ptr,  # [B * R, 4, S] float32 scratch
                     gpl_ptr,  # [B, 3, H, W, C] float32, zeroed, added into
                     gw1_ptr, gb1_ptr, gw2_ptr, gb2_ptr,  # as w1, b1, w2, b2, float32, zeroed, added into
                     N, R, S, C, H, W, Hd, Co, scale, half_box, bias, CLIP: tl.constexpr, HAS_GF: tl.constexpr,
                     HAS_GD: tl.constexpr, HAS_GO: tl.constexpr, HAS_GW: tl.constexpr, A00: tl.constexpr,
                     A01: tl.constexpr, A10: tl.constexpr, A11: tl.constexpr, A20: tl.constexpr, A21: tl.constexpr,
                     BLOCK_R: tl.constexpr, BC: tl.constexpr, BH: tl.constexpr, BCO: tl.constexpr):
    rays = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rays < N
    rays64 = rays.to(tl.int64)
    b64 = rays64 // R
    c = tl.arange(0, BC)
    j = tl.arange(0, BH)
    oc = tl.arange(0, BCO)
    w1, b1, w2c, b2c, w2s, b2s = weights(w1_ptr, b1_ptr, w2_ptr, b2_ptr, C, Hd, Co, BC, BH, BCO)
    w1t = tl.trans(w1)
    w2ct = tl.trans(w2c)
    is_col = oc < Co
    K = S - 1
    sig_p = scr_ptr + rays64 * 4 * S
    dot_p = sig_p + S
    tr_p = dot_p + S
    dm_p = tr_p + S
    gfr = tl.zeros((BLOCK_R, BCO), dtype=tl.float32)
    if HAS_GF:
        gfr = tl.load(gf_ptr + rays64[:, None] * Co + oc[None, :], mask=rmask[:, None] & is_col[None, :], other=0.0)
    # Pass 1: raw densities and <grad_features, colour> per sample.
    for k in range(0, S):
        px, py, pz, t, f, h, a, y, sig, col, inside = sample(
            pl_ptr, o_ptr, d_ptr, t_ptr, rays64, b64, rmask, S, k, c, oc, C, H, W, Co, scale, half_box, w1t, b1,
            w2ct, b2c, w2s, b2s, CLIP, A00, A01, A10, A11, A20, A21, BLOCK_R, BC)
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
        alpha = 1.0 - tl.exp(-(softplus((s0 + s1) / 2.0 + bias) * (t1 - t0)))
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
        e = tl.exp(-(softplus(mm) * delta))
        alpha = 1.0 - e
        G = g_op + depth_coef * ((t0 + t1) / 2.0 - depth_val)
        G += (tl.load(dot_p + k, mask=rmask, other=0.0) + tl.load(dot_p + k + 1, mask=rmask, other=0.0)) / 2.0
        if HAS_GW:
            G += tl.load(gw_ptr + rays64 * K + k, mask=rmask, other=0.0)
        d_alpha = tl.load(tr_p + k, mask=rmask, other=0.0) * (G - suffix)
        suffix = G * alpha + ((1.0 - alpha) + 1e-10) * suffix
        slope = tl.where(mm > 20.0, 1.0, sigmoid(mm))
        tl.store(dm_p + k, d_alpha * delta * e * slope, mask=rmask)
    # Pass 2: the decoder's backward and the scatter, sample by sample. The decoder's gradients stay in this
    # program's registers (distinct per program) and are added to memory once, at the end.
    g_w1 = tl.zeros((BH, BC), dtype=tl.float32)
    g_b1 = tl.zeros((BH,), dtype=tl.float32)
    g_w2c = tl.zeros((BCO, BH), dtype=tl.float32)
    g_b2c = tl.zeros((BCO,), dtype=tl.float32)
    g_w2s = tl.zeros((BH,), dtype=tl.float32)
    g_b2s = tl.zeros((BLOCK_R,), dtype=tl.float32)  # per ray, summed at the end
    for k in range(0, S):
        px, py, pz, t, f, h, a, y, sig, col, inside = sample(
            pl_ptr, o_ptr, d_ptr, t_ptr, rays64, b64, rmask, S, k, c, oc, C, H, W, Co, scale, half_box, w1t, b1,
            w2ct, b2c, w2s, b2s, CLIP, A00, A01, A10, A11, A20, A21, BLOCK_R, BC)
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
            alpha = 1.0 - tl.exp(-(softplus((s0 + s1) / 2.0 + bias) * (t1 - t0)))
            omega += tl.where(valid, alpha * tl.load(tr_p + q, mask=valid, other=0.0), 0.0) / 2.0
            gs += tl.load(dm_p + q, mask=valid, other=0.0) / 2.0
        gs = tl.where(inside & rmask, gs, 0.0)  # d loss / d raw density (sig)
        sg = sigmoid(y)
        gy = gfr * omega[:, None] * 1.002 * sg * (1.0 - sg)  # d loss / d colour logits
        gy = tl.where(rmask[:, None] & is_col[None, :], gy, 0.0)
        g_b2c += tl.sum(gy, axis=0)
        g_b2s += gs
        g_w2c += dot(tl.trans(gy), a)
        g_w2s += tl.sum(gs[:, None] * a, axis=0)
        ga = dot(gy, w2c) + gs[:, None] * w2s[None, :]
        gh = ga * tl.where(h > 20.0, 1.0, sigmoid(h))
        g_b1 += tl.sum(gh, axis=0)
        g_w1 += dot(tl.trans(gh), f)
        gfeat = dot(gh, w1) / 3.0
        for pl in tl.static_range(3):
            x0, y0, tx, ty, ok = plane_taps(px, py, pz, pl, scale, W, H, A00, A01, A10, A11, A20, A21)
            for qq in tl.static_range(4):
                x, yy, wq, ins = tap(x0, y0, tx, ty, ok, qq, W, H, rmask)
                row = ((b64 * 3 + pl) * H + yy.to(tl.int64)) * W + x.to(tl.int64)
                tl.atomic_add(gpl_ptr + row[:, None] * C + c[None, :], wq[:, None] * gfeat,
                              mask=ins[:, None] & (c < C)[None, :], sem="relaxed")
    # relaxed: sums, nothing is ordered by them
    hmask = j < Hd
    tl.atomic_add(gw1_ptr + j[:, None] * C + c[None, :], g_w1, mask=hmask[:, None] & (c < C)[None, :], sem="relaxed")
    tl.atomic_add(gb1_ptr + j, g_b1, mask=hmask, sem="relaxed")
    tl.atomic_add(gw2_ptr + j, g_w2s, mask=hmask, sem="relaxed")
    tl.atomic_add(gw2_ptr + (1 + oc)[:, None] * Hd + j[None, :], g_w2c, mask=is_col[:, None] & hmask[None, :],
                  sem="relaxed")
    tl.atomic_add(gb2_ptr, tl.sum(g_b2s, axis=0), sem="relaxed")
    tl.atomic_add(gb2_ptr + 1 + oc, g_b2c, mask=is_col, sem="relaxed")


def _blocks(C: int, Hd: int, Co: int) -> dict:
    """The padded tile widths (tl.dot wants every dimension >= 16)."""
    return dict(BC=max(16, next_pow2(C)), BH=max(16, next_pow2(Hd)), BCO=max(16, next_pow2(Co)))


def render_forward(planes_cl, origins, dirs, depths, w1, b1, w2, b2, box_warp: float, axes, clip: bool,
                   bias: float):
    """planes_cl [B, 3, H, W, C] contiguous (float32 / float16 / bfloat16), origins / dirs [B, R, 3], depths
    [B, R, S], w1 [Hd, C], b1 [Hd], w2 [1 + Co, Hd], b2 [1 + Co] (contiguous float32), axes the 6 flat plane
    axes. Returns (features [B, R, Co], depth [B, R], opacity [B, R], weights [B, R, S-1]), float32."""
    B, _, H, W, C = planes_cl.shape
    R, S = depths.shape[1], depths.shape[2]
    Hd, Co = w1.shape[0], w2.shape[0] - 1
    N = B * R
    dev = planes_cl.device
    feat = torch.empty(B, R, Co, device=dev, dtype=torch.float32)
    depth = torch.empty(B, R, device=dev, dtype=torch.float32)
    opacity = torch.empty(B, R, device=dev, dtype=torch.float32)
    weights_out = torch.empty(B, R, S - 1, device=dev, dtype=torch.float32)
    if N == 0:
        return feat, depth, opacity, weights_out
    grid = lambda meta: (triton.cdiv(N, meta["BLOCK_R"]),)  # noqa: E731
    launch(_forward_kernel)[grid](planes_cl, origins, dirs, depths, w1, b1, w2, b2, feat, depth, opacity,
                                  weights_out, N, R, S, C, H, W, Hd, Co, 2.0 / box_warp, box_warp / 2.0, bias,
                                  CLIP=clip, A00=axes[0], A01=axes[1], A10=axes[2], A11=axes[3], A20=axes[4],
                                  A21=axes[5], **_blocks(C, Hd, Co), **fixed(BLOCK_R=16, num_warps=4))
    return feat, depth, opacity, weights_out


def render_backward(gf, gd, go, gw, planes_cl, origins, dirs, depths, w1, b1, w2, b2, box_warp: float, axes,
                    clip: bool, bias: float):
    """gf [B, R, Co], gd / go [B, R], gw [B, R, S-1] (each optional: None, else contiguous float32), the rest as
    render_forward -> gradients of the planes [B, 3, H, W, C] (channels-last, float32), w1, b1, w2, b2."""
    B, _, H, W, C = planes_cl.shape
    R, S = depths.shape[1], depths.shape[2]
    Hd, Co = w1.shape[0], w2.shape[0] - 1
    N = B * R
    dev = planes_cl.device
    gpl = torch.zeros(B, 3, H, W, C, device=dev, dtype=torch.float32)
    gw1, gb1 = torch.zeros(Hd, C, device=dev), torch.zeros(Hd, device=dev)
    gw2, gb2 = torch.zeros(Co + 1, Hd, device=dev), torch.zeros(Co + 1, device=dev)
    if N == 0 or (gf is None and gd is None and go is None and gw is None):
        return gpl, gw1, gb1, gw2, gb2
    scratch = torch.empty(N, 4, S, device=dev, dtype=torch.float32)
    grid = lambda meta: (triton.cdiv(N, meta["BLOCK_R"]),)  # noqa: E731
    dummy = depths  # read-only stand-in for the absent gradients (never read: HAS_* are constexpr False)
    launch(_backward_kernel)[grid](
        planes_cl, origins, dirs, depths, w1, b1, w2, b2, dummy if gf is None else gf, dummy if gd is None else gd,
        dummy if go is None else go, dummy if gw is None else gw, scratch, gpl, gw1, gb1, gw2, gb2, N, R, S, C, H, W,
        Hd, Co, 2.0 / box_warp, box_warp / 2.0, bias, CLIP=clip, HAS_GF=gf is not None, HAS_GD=gd is not None,
        HAS_GO=go is not None, HAS_GW=gw is not None, A00=axes[0], A01=axes[1], A10=axes[2], A11=axes[3],
        A20=axes[4], A21=axes[5], **_blocks(C, Hd, Co), **fixed(BLOCK_R=16, num_warps=4))
    return gpl, gw1, gb1, gw2, gb2
