"""Triton kernels of ray_march (EG3D's MipRayMarcher2, fused) and its backward, with host launchers.

One program owns BLOCK_R rays and walks their samples in order; the rays of a block are the vector lanes of the
scalar scan, the channels a second tile dimension. Per sample s the midpoint rule gives the weight
omega_s = (w_{s-1} + w_s) / 2, so the features accumulate in one pass over the colors. The backward recomputes
the transmittance from the inputs (never by division from the end of the ray), keeps it and the per-sample
<grad_features, c_s> in an [R, S] float32 scratch (proportional to the inputs), then runs the reverse sweep,
which also writes grad_densities and the rows of grad_colors. Accumulation is float32; colors may be float16 /
bfloat16 with float32 densities and depths. Autotuned over BLOCK_R and num_warps per (C, switches, dtypes); the
ray and sample counts are not specialised (see _common). No atomics: every output element has one writer.
Kernels and launchers only: registration and autograd live in oneshot.ops.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import autotune, configs, fixed, launch, log1p, next_pow2

__all__ = ["ray_march_forward", "ray_march_backward", "FORWARD_CONFIGS", "BACKWARD_CONFIGS"]

# BLOCK_R rays a program (BLOCK_C, the channel tile, follows C: see _blocks). Tuned per (C, switches, dtypes).
FORWARD_CONFIGS = configs([{"BLOCK_R": 16}, {"BLOCK_R": 32}], warps=(1, 2)) + configs(
    [{"BLOCK_R": 64}, {"BLOCK_R": 128}], warps=(2, 4))
BACKWARD_CONFIGS = FORWARD_CONFIGS


@triton.jit
def _interval(s0, s1, t0, t1, bias):
    """alpha, e = exp(-sigma delta), softplus'(m), delta, tbar of one interval (torch's softplus, threshold 20)."""
    m = (s0 + s1) / 2.0 + bias
    delta = t1 - t0
    tbar = (t0 + t1) / 2.0
    en = tl.exp(-tl.abs(m))
    sp = tl.maximum(m, 0.0) + log1p(en)
    sigma = tl.where(m > 20.0, m, sp)
    slope = tl.where(m > 20.0, 1.0, tl.where(m >= 0.0, 1.0, en) / (1.0 + en))
    e = tl.exp(-(sigma * delta))
    alpha = 1.0 - e
    return alpha, e, slope, delta, tbar


@triton.jit
def _load_interval(s_ptr, t_ptr, row_s, k, rmask, bias):
    """_interval of interval k of the rays whose first sample is at row_s."""
    s0 = tl.load(s_ptr + row_s + k, mask=rmask, other=0.0).to(tl.float32)
    s1 = tl.load(s_ptr + row_s + k + 1, mask=rmask, other=0.0).to(tl.float32)
    t0 = tl.load(t_ptr + row_s + k, mask=rmask, other=0.0).to(tl.float32)
    t1 = tl.load(t_ptr + row_s + k + 1, mask=rmask, other=0.0).to(tl.float32)
    return _interval(s0, s1, t0, t1, bias)


@triton.jit
def _rays(R, S, BLOCK_R: tl.constexpr):
    """This program's rays, their mask, int64 ids and the offset of their first sample."""
    rays = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rays64 = rays.to(tl.int64)
    return rays, rays < R, rays64, rays64 * S


@autotune(FORWARD_CONFIGS, key=["C", "WHITE"])
@triton.jit(do_not_specialize=["R", "S"])
def _forward_kernel(col_ptr,  # [R, S, C] colors
                    s_ptr, t_ptr,  # [R, S] densities, depths
                    feat_ptr,  # [R, C] out, colors' dtype
                    depth_ptr, opacity_ptr,  # [R] out
                    weights_ptr,  # [R, S - 1] out
                    R, S, C, bias, WHITE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    rays, rmask, rays64, row_s = _rays(R, S, BLOCK_R)
    ch = tl.arange(0, BLOCK_C)
    for cb in range(0, tl.cdiv(tl.maximum(C, 1), BLOCK_C)):
        c = cb * BLOCK_C + ch
        cmask = c < C
        acc = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
        trans = tl.full((BLOCK_R,), 1.0, tl.float32)
        op = tl.zeros((BLOCK_R,), dtype=tl.float32)
        num = tl.zeros((BLOCK_R,), dtype=tl.float32)
        w_prev = tl.zeros((BLOCK_R,), dtype=tl.float32)
        s_cur = tl.load(s_ptr + row_s, mask=rmask, other=0.0).to(tl.float32)
        t_cur = tl.load(t_ptr + row_s, mask=rmask, other=0.0).to(tl.float32)
        for k in range(0, S):
            has = (rays * 0 + k + 1) < S  # a vector, so that masks are tensors in the interpreter too
            s_next = tl.load(s_ptr + row_s + k + 1, mask=rmask & has, other=0.0).to(tl.float32)
            t_next = tl.load(t_ptr + row_s + k + 1, mask=rmask & has, other=0.0).to(tl.float32)
            alpha, e, slope, delta, tbar = _interval(s_cur, s_next, t_cur, t_next, bias)
            w = tl.where(has, alpha * trans, 0.0)
            trans = tl.where(has, trans * ((1.0 - alpha) + 1e-10), trans)
            op += w
            num += w * tbar
            if cb == 0:
                tl.store(weights_ptr + rays64 * (S - 1) + k, w, mask=rmask & has)
            om = (w_prev + w) / 2.0
            ptrs = col_ptr + (row_s + k)[:, None] * C + c[None, :]
            v = tl.load(ptrs, mask=rmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
            acc += om[:, None] * v
            w_prev = w
            s_cur = s_next
            t_cur = t_next
        if WHITE:
            acc += (1.0 - op)[:, None]
        out = feat_ptr + rays64[:, None] * C + c[None, :]
        tl.store(out, acc.to(feat_ptr.dtype.element_ty), mask=rmask[:, None] & cmask[None, :])
        if cb == 0:
            t_first = tl.load(t_ptr + row_s, mask=rmask, other=0.0).to(tl.float32)
            t_last = tl.load(t_ptr + row_s + S - 1, mask=rmask, other=0.0).to(tl.float32)
            hit = op > 0.0
            d = num / tl.where(hit, op, 1.0)
            d = tl.minimum(tl.maximum(d, t_first), t_last)
            tl.store(depth_ptr + rays64, tl.where(hit, d, t_last), mask=rmask)
            tl.store(opacity_ptr + rays64, op, mask=rmask)


@autotune(BACKWARD_CONFIGS, key=["C", "WHITE", "HAS_GF", "HAS_GD", "HAS_GO", "HAS_GW"])
@triton.jit(do_not_specialize=["R", "S"])
def _backward_kernel(col_ptr,  # [R, S, C] colors
                     s_ptr, t_ptr,  # [R, S] densities, depths
                     gf_ptr,  # [R, C] grad features (read with HAS_GF)
                     gd_ptr, go_ptr,  # [R] grad depth, grad opacity (read with HAS_GD, HAS_GO)
                     gw_ptr,  # [R, S - 1] grad weights (read with HAS_GW)
                     trans_ptr, dots_ptr,  # [R, S] float32 scratch, written then read
                     gc_ptr,  # [R, S, C] out, colors' dtype
                     gs_ptr,  # [R, S] out
                     R, S, C, bias, WHITE: tl.constexpr, HAS_GF: tl.constexpr, HAS_GD: tl.constexpr,
                     HAS_GO: tl.constexpr, HAS_GW: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    rays, rmask, rays64, row_s = _rays(R, S, BLOCK_R)
    ch = tl.arange(0, BLOCK_C)
    K = S - 1
    n_cb = tl.cdiv(tl.maximum(C, 1), BLOCK_C)

    # Pass 1: transmittance before each interval (kept in the scratch), opacity, depth numerator.
    trans = tl.full((BLOCK_R,), 1.0, tl.float32)
    op = tl.zeros((BLOCK_R,), dtype=tl.float32)
    num = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for k in range(0, K):
        alpha, e, slope, delta, tbar = _load_interval(s_ptr, t_ptr, row_s, k, rmask, bias)
        tl.store(trans_ptr + row_s + k, trans, mask=rmask)
        w = alpha * trans
        trans = trans * ((1.0 - alpha) + 1e-10)
        op += w
        num += w * tbar

    # <grad_features, c_s> per sample, and sum(grad_features) for the white background.
    gf_sum = tl.zeros((BLOCK_R,), dtype=tl.float32)
    if HAS_GF:
        for k in range(0, S):
            dot = tl.zeros((BLOCK_R,), dtype=tl.float32)
            for cb in range(0, n_cb):
                c = cb * BLOCK_C + ch
                m2 = rmask[:, None] & (c < C)[None, :]
                g = tl.load(gf_ptr + rays64[:, None] * C + c[None, :], mask=m2, other=0.0).to(tl.float32)
                v = tl.load(col_ptr + (row_s + k)[:, None] * C + c[None, :], mask=m2, other=0.0).to(tl.float32)
                dot += tl.sum(g * v, axis=1)
            tl.store(dots_ptr + row_s + k, dot, mask=rmask)
        if WHITE:
            for cb in range(0, n_cb):
                c = cb * BLOCK_C + ch
                m2 = rmask[:, None] & (c < C)[None, :]
                g = tl.load(gf_ptr + rays64[:, None] * C + c[None, :], mask=m2, other=0.0).to(tl.float32)
                gf_sum += tl.sum(g, axis=1)

    g_op = -gf_sum
    if HAS_GO:
        g_op += tl.load(go_ptr + rays64, mask=rmask, other=0.0).to(tl.float32)
    depth_coef = tl.zeros((BLOCK_R,), dtype=tl.float32)
    depth_val = tl.zeros((BLOCK_R,), dtype=tl.float32)
    if HAS_GD:
        t_first = tl.load(t_ptr + row_s, mask=rmask, other=0.0).to(tl.float32)
        t_last = tl.load(t_ptr + row_s + K, mask=rmask, other=0.0).to(tl.float32)
        safe = tl.where(op > 0.0, op, 1.0)
        d = num / safe
        passes = (op > 0.0) & (d >= t_first) & (d <= t_last)
        gd = tl.load(gd_ptr + rays64, mask=rmask, other=0.0).to(tl.float32)
        depth_val = tl.where(passes, d, 0.0)
        depth_coef = tl.where(passes, gd / safe, 0.0)

    # Pass 2, k = K-1 .. -1: the reverse sweep; sample k + 1 is finished at step k.
    suffix = tl.zeros((BLOCK_R,), dtype=tl.float32)
    dm_next = tl.zeros((BLOCK_R,), dtype=tl.float32)
    w_next = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for i in range(0, S):
        k = K - 1 - i
        has = (rays * 0 + k) >= 0  # a vector (see the forward)
        kk = tl.maximum(k, 0)
        alpha, e, slope, delta, tbar = _load_interval(s_ptr, t_ptr, row_s, kk, rmask, bias)
        trans_k = tl.load(trans_ptr + row_s + kk, mask=rmask, other=0.0)
        w = tl.where(has, alpha * trans_k, 0.0)
        g = g_op + depth_coef * (tbar - depth_val)
        if HAS_GW:
            g += tl.load(gw_ptr + rays64 * K + kk, mask=rmask, other=0.0).to(tl.float32)
        if HAS_GF:
            d0 = tl.load(dots_ptr + row_s + kk, mask=rmask, other=0.0)
            d1 = tl.load(dots_ptr + row_s + kk + 1, mask=rmask, other=0.0)
            g += (d0 + d1) / 2.0
        d_alpha = trans_k * (g - suffix)
        suffix = tl.where(has, g * alpha + ((1.0 - alpha) + 1e-10) * suffix, suffix)
        dm = tl.where(has, d_alpha * delta * e * slope, 0.0)
        smp = k + 1
        tl.store(gs_ptr + row_s + smp, (dm + dm_next) / 2.0, mask=rmask)
        om = (w + w_next) / 2.0
        for cb in range(0, n_cb):
            c = cb * BLOCK_C + ch
            m2 = rmask[:, None] & (c < C)[None, :]
            if HAS_GF:
                gfv = tl.load(gf_ptr + rays64[:, None] * C + c[None, :], mask=m2, other=0.0).to(tl.float32)
                val = om[:, None] * gfv
            else:
                val = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
            tl.store(gc_ptr + (row_s + smp)[:, None] * C + c[None, :], val.to(gc_ptr.dtype.element_ty), mask=m2)
        dm_next = dm
        w_next = w


def _blocks(R: int, C: int) -> tuple[int, int]:
    """(BLOCK_R when not autotuned, BLOCK_C): a channel tile of up to 64."""
    block_c = min(next_pow2(max(C, 1)), 64)
    block_r = max(1, min(32, 2048 // block_c))
    return block_r, block_c


def ray_march_forward(colors: torch.Tensor, densities: torch.Tensor, depths: torch.Tensor, density_bias: float,
                      white_background: bool):
    """colors [R, S, C], densities/depths [R, S] (contiguous) -> features [R, C], depth, opacity [R],
    weights [R, S-1]."""
    R, S, C = colors.shape
    feat = colors.new_empty((R, C))
    depth = densities.new_empty((R,))
    opacity = densities.new_empty((R,))
    weights = densities.new_empty((R, S - 1))
    if R == 0:
        return feat, depth, opacity, weights
    block_r, block_c = _blocks(R, C)
    grid = lambda meta: (triton.cdiv(R, meta["BLOCK_R"]),)  # noqa: E731
    launch(_forward_kernel)[grid](colors, densities, depths, feat, depth, opacity, weights, R, S, C,
                                  float(density_bias), WHITE=bool(white_background), BLOCK_C=block_c,
                                  **fixed(BLOCK_R=block_r, num_warps=4))
    return feat, depth, opacity, weights


def ray_march_backward(grad_features, grad_depth, grad_opacity, grad_weights, colors, densities, depths,
                       density_bias: float, white_background: bool):
    """Gradients (each optional, contiguous) -> grad_colors [R, S, C], grad_densities [R, S]."""
    R, S, C = colors.shape
    grad_colors = colors.new_empty((R, S, C))
    grad_dens = densities.new_empty((R, S))
    if R == 0:
        return grad_colors, grad_dens
    trans = torch.empty((R, S), dtype=torch.float32, device=colors.device)
    dots = torch.empty((R, S), dtype=torch.float32, device=colors.device) if grad_features is not None else trans
    dummy = densities  # a valid pointer for the absent gradients (never read: HAS_* are constexpr False)
    block_r, block_c = _blocks(R, C)
    grid = lambda meta: (triton.cdiv(R, meta["BLOCK_R"]),)  # noqa: E731
    launch(_backward_kernel)[grid](
        colors, densities, depths,
        grad_features if grad_features is not None else colors,
        grad_depth if grad_depth is not None else dummy,
        grad_opacity if grad_opacity is not None else dummy,
        grad_weights if grad_weights is not None else dummy,
        trans, dots, grad_colors, grad_dens, R, S, C, float(density_bias),
        WHITE=bool(white_background), HAS_GF=grad_features is not None, HAS_GD=grad_depth is not None,
        HAS_GO=grad_opacity is not None, HAS_GW=grad_weights is not None, BLOCK_C=block_c,
        **fixed(BLOCK_R=block_r, num_warps=4),
    )
    return grad_colors, grad_dens
