"""Triton kernels of rasterize_points (exact nearest-point splatting onto the three tri-planes) and its
backward, with host launchers.

Nearest search: one program owns BLOCK_CELLS cells of one plane of one batch and walks the points in blocks of
BLOCK_N: it builds the [cells, points] tile of pinned squared distances, takes the block's minimum and its
first (lowest) index, and keeps the running best with a strict <, so ties go to the lowest point index as in
every backend. The arithmetic is the contract's: scale = 2 / box_warp and max_distance^2 computed in double and
rounded to float32, c = point * scale, cell centres by the same formulas, d^2 = du*du + dv*dv with each
operation rounded (launched with enable_fp_fusion=False, so no fused multiply-add). Gather and backward
(relaxed atomic scatter-add in float32, so the summation order varies) are separate kernels. Points are float32,
features float32 / float16 / bfloat16. Autotuned over the block sizes and num_warps (see _common); the point
count and plane size are not specialised. Kernels and launchers only: registration and autograd live in
oneshot.ops.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._common import autotune, configs, fixed, interpreting, launch, next_pow2

__all__ = ["rasterize_forward", "rasterize_backward", "NEAREST_CONFIGS", "GATHER_CONFIGS", "SCATTER_CONFIGS"]

# Nearest search: a [BLOCK_CELLS, BLOCK_N] tile of distances. Gather / scatter: BLOCK_CELLS cells a program
# (BLOCK_C follows C). Tuned per (switches, dtypes) and per C.
NEAREST_CONFIGS = configs([{"BLOCK_CELLS": 64, "BLOCK_N": 64}, {"BLOCK_CELLS": 128, "BLOCK_N": 32},
                           {"BLOCK_CELLS": 32, "BLOCK_N": 128}], warps=(4, 8))
GATHER_CONFIGS = configs([{"BLOCK_CELLS": 64}], warps=(2,)) + configs([{"BLOCK_CELLS": 128}], warps=(4,)) + configs(
    [{"BLOCK_CELLS": 256}], warps=(4, 8))
SCATTER_CONFIGS = GATHER_CONFIGS


@triton.jit
def _centre(j, n, ALIGN: tl.constexpr):
    if ALIGN:
        return tl.where(n == 1, 0.0, (2 * j).to(tl.float32) / tl.maximum(n - 1, 1).to(tl.float32) - 1.0)
    return (2 * j + 1).to(tl.float32) / n.to(tl.float32) - 1.0


@autotune(NEAREST_CONFIGS, key=["HAS_VALID", "ALIGN"])
@triton.jit(do_not_specialize=["N", "H", "W"])
def _nearest_kernel(points_ptr,  # [B, N, 3] float32
                    valid_ptr,  # [B, N] bool (read with HAS_VALID)
                    index_ptr,  # [B, 3, H, W] int64 out (-1: no point)
                    N, H, W, scale, max_d2, a00, a01, a10, a11, a20, a21,
                    HAS_VALID: tl.constexpr, ALIGN: tl.constexpr, BLOCK_CELLS: tl.constexpr,
                    BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    p = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    ca = tl.where(p == 0, a00, tl.where(p == 1, a10, a20))
    cb = tl.where(p == 0, a01, tl.where(p == 1, a11, a21))
    cell = pid * BLOCK_CELLS + tl.arange(0, BLOCK_CELLS)
    cmask = cell < H * W
    i = cell // W
    j = cell - i * W
    u = _centre(j, W, ALIGN)
    v = _centre(i, H, ALIGN)
    best = tl.full((BLOCK_CELLS,), float("inf"), tl.float32)
    arg = tl.full((BLOCK_CELLS,), -1, tl.int32)
    nn = tl.arange(0, BLOCK_N)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + nn
        nmask = n < N
        base = points_ptr + (b * N + n) * 3
        a = tl.load(base + ca, mask=nmask, other=0.0) * scale
        bb = tl.load(base + cb, mask=nmask, other=0.0) * scale
        keep = nmask
        if HAS_VALID:
            keep = keep & (tl.load(valid_ptr + b * N + n, mask=nmask, other=0) != 0)
        keep = keep & (a == a) & (bb == bb)  # NaN coordinates never win
        a = tl.where(keep, a, float("inf"))
        bb = tl.where(keep, bb, float("inf"))
        du = u[:, None] - a[None, :]
        dv = v[:, None] - bb[None, :]
        d2 = du * du + dv * dv
        blk = tl.min(d2, axis=1)
        # The first index attaining the block minimum (ties: the lowest index).
        first = tl.min(tl.where(d2 == blk[:, None], nn[None, :], BLOCK_N), axis=1)
        better = blk < best
        best = tl.where(better, blk, best)
        arg = tl.where(better, n0 + first, arg)
    empty = (arg < 0) | (~(best <= max_d2)) | (~(best < float("inf")))
    out = tl.where(empty, -1, arg).to(tl.int64)
    tl.store(index_ptr + (b * 3 + p) * H * W + cell, out, mask=cmask)


@triton.jit
def _cells(index_ptr, HW, BLOCK_CELLS: tl.constexpr):
    """This program's cells of plane bp = (batch b, plane) and their point index (-1: empty)."""
    bp = tl.program_id(1).to(tl.int64)
    cell = tl.program_id(0) * BLOCK_CELLS + tl.arange(0, BLOCK_CELLS)
    cmask = cell < HW
    return bp, bp // 3, cell, cmask, tl.load(index_ptr + bp * HW + cell, mask=cmask, other=-1)


@autotune(GATHER_CONFIGS, key=["C"])
@triton.jit(do_not_specialize=["N"])
def _gather_kernel(features_ptr,  # [B, N, C]
                   index_ptr,  # [B, 3, H, W] int64 (-1: no point)
                   planes_ptr,  # [B, 3, C, H, W] out, features' dtype
                   N, C, HW, BLOCK_CELLS: tl.constexpr, BLOCK_C: tl.constexpr):
    bp, b, cell, cmask, idx = _cells(index_ptr, HW, BLOCK_CELLS)
    has = idx >= 0
    ch = tl.arange(0, BLOCK_C)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + ch
        m2 = (cmask & has)[:, None] & (c < C)[None, :]
        f = tl.load(features_ptr + (b * N + idx)[:, None] * C + c[None, :], mask=m2, other=0.0)
        dst = planes_ptr + (bp * C + c[None, :]) * HW + cell[:, None]
        tl.store(dst, f.to(planes_ptr.dtype.element_ty), mask=cmask[:, None] & (c < C)[None, :])


@autotune(SCATTER_CONFIGS, key=["C"], reset_to_zero=["gfeat_ptr"])
@triton.jit(do_not_specialize=["N"])
def _scatter_kernel(grad_ptr,  # [B, 3, C, H, W] grad of the planes
                    index_ptr,  # [B, 3, H, W] int64 (-1: no point)
                    gfeat_ptr,  # [B, N, C] float32, zeroed, added into
                    N, C, HW, BLOCK_CELLS: tl.constexpr, BLOCK_C: tl.constexpr):
    bp, b, cell, cmask, idx = _cells(index_ptr, HW, BLOCK_CELLS)
    has = cmask & (idx >= 0) & (idx < N)
    ch = tl.arange(0, BLOCK_C)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + ch
        m2 = has[:, None] & (c < C)[None, :]
        g = tl.load(grad_ptr + (bp * C + c[None, :]) * HW + cell[:, None], mask=m2, other=0.0).to(tl.float32)
        # relaxed: a sum, nothing is ordered by it
        tl.atomic_add(gfeat_ptr + (b * N + idx)[:, None] * C + c[None, :], g, mask=m2, sem="relaxed")


def _f32(x: float) -> float:
    """x rounded to float32, as the contract pins scale and max_distance^2 (computed in double)."""
    return float(torch.tensor(x, dtype=torch.float64).to(torch.float32))


def _options() -> dict:
    # No fused multiply-add in the pinned d^2 (the interpreter computes with numpy: nothing to fuse).
    return {} if interpreting() else {"enable_fp_fusion": False}


def rasterize_forward(points: torch.Tensor, features: torch.Tensor, H: int, W: int, box_warp: float, axes,
                      valid, max_distance, align_corners: bool):
    """points [B, N, 3] float32, features [B, N, C], valid [B, N] bool or None (all contiguous) ->
    planes [B, 3, C, H, W] (features' dtype), index [B, 3, H, W] int64."""
    B, N, _ = points.shape
    C = features.shape[2]
    index = torch.empty((B, 3, H, W), dtype=torch.int64, device=points.device)
    planes = features.new_empty((B, 3, C, H, W))
    if B == 0:
        return planes, index
    if N == 0:
        index.fill_(-1)
        planes.zero_()
        return planes, index
    scale = _f32(2.0 / box_warp)
    max_d2 = math.inf if max_distance is None else _f32(float(max_distance) * float(max_distance))
    grid = lambda meta: (triton.cdiv(H * W, meta["BLOCK_CELLS"]), 3, B)  # noqa: E731
    launch(_nearest_kernel)[grid](points, valid if valid is not None else points, index, N, H, W, scale, max_d2,
                                  *axes, HAS_VALID=valid is not None, ALIGN=bool(align_corners), **_options(),
                                  **fixed(BLOCK_CELLS=64, BLOCK_N=64, num_warps=4))
    if C > 0:
        block_c = min(next_pow2(C), 32)
        grid = lambda meta: (triton.cdiv(H * W, meta["BLOCK_CELLS"]), B * 3)  # noqa: E731
        launch(_gather_kernel)[grid](features, index, planes, N, C, H * W, BLOCK_C=block_c,
                                     **fixed(BLOCK_CELLS=128, num_warps=4))
    return planes, index


def rasterize_backward(grad_planes: torch.Tensor, index: torch.Tensor, num_points: int) -> torch.Tensor:
    """grad_planes [B, 3, C, H, W] contiguous, index [B, 3, H, W] -> grad of the features [B, N, C] (float32
    accumulation, returned in grad_planes' dtype)."""
    B, _, C, H, W = grad_planes.shape
    acc = torch.zeros((B, num_points, C), dtype=torch.float32, device=grad_planes.device)
    if B > 0 and C > 0 and num_points > 0 and H * W > 0:
        block_c = min(next_pow2(C), 32)
        grid = lambda meta: (triton.cdiv(H * W, meta["BLOCK_CELLS"]), B * 3)  # noqa: E731
        launch(_scatter_kernel)[grid](grad_planes, index, acc, num_points, C, H * W, BLOCK_C=block_c,
                                      **fixed(BLOCK_CELLS=128, num_warps=4))
    return acc if grad_planes.dtype == torch.float32 else acc.to(grad_planes.dtype)
