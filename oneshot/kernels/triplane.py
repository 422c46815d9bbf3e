"""Triton kernels of triplane_sample (bilinear lookup of three feature planes at 3D points) and its backward,
with host launchers.

The planes are read channels-last ([B, 3, H, W, C], the layout oneshot.ops hands over), so a tile of BLOCK_M
points x BLOCK_C channels of one tap is BLOCK_M contiguous runs. One program owns BLOCK_M points of one batch
and loops over channel blocks; the tap geometry is computed once per program. Backward: the planes' gradient
is scattered with relaxed atomic adds (a sum orders nothing) into a float32 channels-last buffer (so its
summation order varies, as with grid_sample); the points' gradient reduces <grad_out, tap> over the channels
inside the program, so each point is written once. Accumulation is float32; planes may be float16 / bfloat16
with float32 points. Autotuned over BLOCK_M and num_warps per (C, switches, dtypes); the point count and the
plane size are not specialised (see _common). Kernels and launchers only: registration and autograd live in
oneshot.ops.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import autotune, configs, fixed, launch, next_pow2, taps

__all__ = ["triplane_forward", "triplane_backward", "FORWARD_CONFIGS", "BACKWARD_CONFIGS"]

REDUCE = {"mean": 0, "sum": 1, "none": 2}

# BLOCK_M points a program (BLOCK_C, the channel tile, follows C: see _blocks). Tuned per (C, dtypes, switches).
FORWARD_CONFIGS = configs([{"BLOCK_M": 32}], warps=(2, 4)) + configs([{"BLOCK_M": 64}, {"BLOCK_M": 128}],
                                                                     warps=(4, 8))
BACKWARD_CONFIGS = configs([{"BLOCK_M": 32}, {"BLOCK_M": 64}], warps=(2, 4)) + configs([{"BLOCK_M": 128}],
                                                                                       warps=(4, 8))


@triton.jit
def _coord(px, py, pz, a):
    return tl.where(a == 0, px, tl.where(a == 1, py, pz))


@triton.jit
def _scaled_points(points_ptr, b, m64, M, mmask, scale):
    """c = points * scale for points m of batch b (x, y, z vectors)."""
    base = points_ptr + (b * M + m64) * 3
    px = tl.load(base + 0, mask=mmask, other=0.0).to(tl.float32) * scale
    py = tl.load(base + 1, mask=mmask, other=0.0).to(tl.float32) * scale
    pz = tl.load(base + 2, mask=mmask, other=0.0).to(tl.float32) * scale
    return px, py, pz


@triton.jit
def _plane_taps(px, py, pz, p: tl.constexpr, a00, a01, a10, a11, a20, a21, W, H):
    """The coordinate pair plane p reads, and the tap geometry there (see taps)."""
    if p == 0:
        ax, ay = a00, a01
    elif p == 1:
        ax, ay = a10, a11
    else:
        ax, ay = a20, a21
    x0, y0, tx, ty, anyin = taps(_coord(px, py, pz, ax), _coord(px, py, pz, ay), W, H)
    return ax, ay, x0, y0, tx, ty, anyin


@triton.jit
def _tap(x0, y0, tx, ty, live, k: tl.constexpr, W, H, C):
    """Tap k (0: (x0, y0), 1: (x0+1, y0), 2: (x0, y0+1), 3: (x0+1, y0+1)): element offset of its channel row in
    the plane, whether it is read, and its two weight factors (weight = wx * wy)."""
    xi = x0 + (k % 2)
    yi = y0 + (k // 2)
    wx = tx if k % 2 == 1 else 1.0 - tx
    wy = ty if k // 2 == 1 else 1.0 - ty
    inside = live & (xi >= 0) & (xi < W) & (yi >= 0) & (yi < H)
    return (yi.to(tl.int64) * W + xi) * C, inside, wx, wy


@autotune(FORWARD_CONFIGS, key=["C", "REDUCE"])
@triton.jit(do_not_specialize=["M", "H", "W"])
def _forward_kernel(planes_ptr,  # [B, 3, H, W, C] channels-last planes
                    points_ptr,  # [B, M, 3] float32
                    out_ptr,  # [B, M, C], or [B, 3, M, C] with REDUCE == 2 ("none")
                    M, C, H, W, scale, a00, a01, a10, a11, a20, a21,
                    REDUCE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    mmask = m < M
    m64 = m.to(tl.int64)
    px, py, pz = _scaled_points(points_ptr, b, m64, M, mmask, scale)
    ch = tl.arange(0, BLOCK_C)
    for cb in range(0, tl.cdiv(C, BLOCK_C)):
        c = cb * BLOCK_C + ch
        cmask = c < C
        total = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
        for p in tl.static_range(3):
            ax, ay, x0, y0, tx, ty, anyin = _plane_taps(px, py, pz, p, a00, a01, a10, a11, a20, a21, W, H)
            plane = planes_ptr + (b * 3 + p) * H * W * C
            acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
            for k in tl.static_range(4):
                off, inside, wx, wy = _tap(x0, y0, tx, ty, anyin & mmask, k, W, H, C)
                v = tl.load(plane + off[:, None] + c[None, :], mask=inside[:, None] & cmask[None, :], other=0.0)
                acc += (wx * wy)[:, None] * v.to(tl.float32)
            if REDUCE == 2:
                dst = out_ptr + ((b * 3 + p) * M + m64)[:, None] * C + c[None, :]
                tl.store(dst, acc.to(out_ptr.dtype.element_ty), mask=mmask[:, None] & cmask[None, :])
            else:
                total += acc
        if REDUCE != 2:
            if REDUCE == 0:
                total = total / 3.0
            dst = out_ptr + (b * M + m64)[:, None] * C + c[None, :]
            tl.store(dst, total.to(out_ptr.dtype.element_ty), mask=mmask[:, None] & cmask[None, :])


@autotune(BACKWARD_CONFIGS, key=["C", "REDUCE", "NEED_PLANES", "NEED_POINTS"], reset_to_zero=["gplanes_ptr"])
@triton.jit(do_not_specialize=["M", "H", "W"])
def _backward_kernel(grad_ptr,  # [B, M, C], or [B, 3, M, C] with REDUCE == 2
                     planes_ptr,  # [B, 3, H, W, C] channels-last planes
                     points_ptr,  # [B, M, 3] float32
                     gplanes_ptr,  # [B, 3, H, W, C] float32, zeroed, added into (a 1-element dummy without NEED_PLANES)
                     gpoints_ptr,  # [B, M, 3], written (points_ptr without NEED_POINTS)
                     M, C, H, W, scale, a00, a01, a10, a11, a20, a21, REDUCE: tl.constexpr,
                     NEED_PLANES: tl.constexpr, NEED_POINTS: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_C: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    mmask = m < M
    m64 = m.to(tl.int64)
    px, py, pz = _scaled_points(points_ptr, b, m64, M, mmask, scale)
    factor = 1.0 / 3.0 if REDUCE == 0 else 1.0
    ch = tl.arange(0, BLOCK_C)
    g0 = tl.zeros((BLOCK_M,), dtype=tl.float32)
    g1 = tl.zeros((BLOCK_M,), dtype=tl.float32)
    g2 = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for p in tl.static_range(3):
        ax, ay, x0, y0, tx, ty, anyin = _plane_taps(px, py, pz, p, a00, a01, a10, a11, a20, a21, W, H)
        plane = planes_ptr + (b * 3 + p) * H * W * C
        gplane = gplanes_ptr + (b * 3 + p) * H * W * C
        if REDUCE == 2:
            grow = grad_ptr + ((b * 3 + p) * M + m64) * C
        else:
            grow = grad_ptr + (b * M + m64) * C
        hx = tl.zeros((BLOCK_M,), dtype=tl.float32)
        hy = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for cb in range(0, tl.cdiv(C, BLOCK_C)):
            c = cb * BLOCK_C + ch
            cmask = c < C
            g = tl.load(grow[:, None] + c[None, :], mask=mmask[:, None] & cmask[None, :], other=0.0)
            g = g.to(tl.float32) * factor
            for k in tl.static_range(4):
                off, inside, wx, wy = _tap(x0, y0, tx, ty, anyin & mmask, k, W, H, C)
                m2 = inside[:, None] & cmask[None, :]
                if NEED_PLANES:
                    # relaxed: a sum, nothing is ordered by it
                    tl.atomic_add(gplane + off[:, None] + c[None, :], (wx * wy)[:, None] * g, mask=m2, sem="relaxed")
                if NEED_POINTS:
                    v = tl.load(plane + off[:, None] + c[None, :], mask=m2, other=0.0).to(tl.float32)
                    d = tl.sum(g * v, axis=1)
                    dwx = wy if k % 2 == 1 else -wy  # d(weight)/d(ix)
                    dwy = wx if k // 2 == 1 else -wx  # d(weight)/d(iy)
                    hx += dwx * d
                    hy += dwy * d
        if NEED_POINTS:
            # d(pixel)/d(c) = size / 2; d(c)/d(point) = scale (below).
            hx = hx * W / 2.0
            hy = hy * H / 2.0
            g0 += tl.where(ax == 0, hx, 0.0) + tl.where(ay == 0, hy, 0.0)
            g1 += tl.where(ax == 1, hx, 0.0) + tl.where(ay == 1, hy, 0.0)
            g2 += tl.where(ax == 2, hx, 0.0) + tl.where(ay == 2, hy, 0.0)
    if NEED_POINTS:
        gbase = gpoints_ptr + (b * M + m64) * 3
        tl.store(gbase + 0, g0 * scale, mask=mmask)
        tl.store(gbase + 1, g1 * scale, mask=mmask)
        tl.store(gbase + 2, g2 * scale, mask=mmask)


def _blocks(C: int) -> tuple[int, int]:
    """(BLOCK_M when not autotuned, BLOCK_C): a channel tile of up to 64, about 1K elements a tile."""
    block_c = min(next_pow2(max(C, 1)), 64)
    return max(16, 4096 // block_c // 4), block_c


def triplane_forward(planes_cl: torch.Tensor, points: torch.Tensor, box_warp: float, axes, reduce: str):
    """planes_cl [B, 3, H, W, C] contiguous, points [B, M, 3] contiguous, axes the 6 flat plane axes, reduce "mean" /
    "sum" / "none" -> [B, M, C] or [B, 3, M, C] (none), in the planes' dtype."""
    B, _, H, W, C = planes_cl.shape
    M = points.shape[1]
    shape = (B, 3, M, C) if reduce == "none" else (B, M, C)
    out = planes_cl.new_empty(shape)
    if out.numel() == 0:
        return out
    block_m, block_c = _blocks(C)
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]), B)  # noqa: E731
    launch(_forward_kernel)[grid](planes_cl, points, out, M, C, H, W, 2.0 / box_warp, *axes,
                                  REDUCE=REDUCE[reduce], BLOCK_C=block_c, **fixed(BLOCK_M=block_m, num_warps=4))
    return out


def triplane_backward(grad_out: torch.Tensor, planes_cl: torch.Tensor, points: torch.Tensor, box_warp: float, axes,
                      reduce: str, need_planes: bool, need_points: bool):
    """grad_out as triplane_forward's output (contiguous), the rest as triplane_forward -> grad of the planes,
    channels-last [B, 3, H, W, C] in float32 ([0] when not needed), grad of the points [B, M, 3] ([0] when not
    needed)."""
    B, _, H, W, C = planes_cl.shape
    M = points.shape[1]
    gplanes = torch.zeros((B, 3, H, W, C) if need_planes else (0,), dtype=torch.float32, device=planes_cl.device)
    gpoints = (torch.zeros((B, M, 3), dtype=points.dtype, device=points.device) if need_points
               else points.new_empty((0,)))
    if B == 0 or M == 0 or C == 0 or not (need_planes or need_points):
        return gplanes, gpoints
    block_m, block_c = _blocks(C)
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]), B)  # noqa: E731
    # Never an input as the dummy: the autotuner zeroes gplanes_ptr before timing each config.
    dummy = torch.zeros(1, dtype=torch.float32, device=planes_cl.device)
    launch(_backward_kernel)[grid](grad_out, planes_cl, points, gplanes if need_planes else dummy,
                                   gpoints if need_points else points, M, C, H, W, 2.0 / box_warp, *axes,
                                   REDUCE=REDUCE[reduce], NEED_PLANES=bool(need_planes),
                                   NEED_POINTS=bool(need_points), BLOCK_C=block_c,
                                   **fixed(BLOCK_M=block_m, num_warps=4))
    return gplanes, gpoints
