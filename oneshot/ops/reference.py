"""Pure-PyTorch twins of every oneshot op: the test oracle, the fallback and the benchmark baseline.

Written the way the anchor code bases do it, so benchmark ratios against them mean something:
``triplane_sample`` on ``grid_sample`` (EG3D), ``ray_march`` as EG3D's vectorised MipRayMarcher2 (cumprod over
samples), ``rasterize_points`` as distance + argmin (the released GOHA code), but in chunks so that no dense
cells x points matrix larger than ``RASTER_CHUNK_ELEMENTS`` is ever built.

These functions do not check their arguments: call them through :mod:`oneshot.ops` with
``backend="reference"`` unless the inputs are known to be well formed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["triplane_sample", "ray_march", "rasterize_points", "cell_centres", "RASTER_CHUNK_ELEMENTS"]

#: Largest [cells, points] distance block built at once by :func:`rasterize_points` (64 Mi elements).
RASTER_CHUNK_ELEMENTS = 1 << 26


def _empty_result(shape, *inputs: Tensor) -> Tensor:
    """Zeros of `shape` that still depend on the inputs, so autograd returns (zero) gradients for them."""
    link = sum(t.reshape(-1)[:0].sum() for t in inputs)  # exactly 0, never NaN
    return inputs[0].new_zeros(shape) + link


def triplane_sample(
    planes: Tensor,  # [B, 3, C, H, W]
    points: Tensor,  # [B, M, 3]
    box_warp: float = 1.0,
    axes=((0, 1), (0, 2), (2, 1)),
    reduce: str = "mean",
) -> Tensor:  # [B, M, C] ("mean", "sum") or [B, 3, M, C] ("none")
    B, _, C, H, W = planes.shape
    M = points.shape[1]
    if B == 0 or M == 0 or C == 0 or H == 0 or W == 0:
        shape = (B, 3, M, C) if reduce == "none" else (B, M, C)
        return _empty_result(shape, planes, points)
    out_dtype = planes.dtype
    if planes.dtype != points.dtype:  # 16-bit planes with float32 points: sample in float32
        planes = planes.to(points.dtype)
    c = points * torch.tensor(2.0 / box_warp, dtype=points.dtype, device=points.device)
    grid = torch.stack([torch.stack([c[..., a], c[..., b]], dim=-1) for a, b in axes], dim=1)  # [B, 3, M, 2]
    sampled = F.grid_sample(
        planes.reshape(B * 3, C, H, W),
        grid.reshape(B * 3, 1, M, 2),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )  # [B*3, C, 1, M]
    sampled = sampled.reshape(B, 3, C, M).transpose(2, 3)  # [B, 3, M, C]
    if reduce == "none":
        return sampled.to(out_dtype)
    return (sampled.sum(dim=1) if reduce == "sum" else sampled.mean(dim=1)).to(out_dtype)


def ray_march(
    colors: Tensor,  # [..., S, C]
    densities: Tensor,  # [..., S] raw, before the activation
    depths: Tensor,  # [..., S] non-decreasing along each ray
    density_bias: float = -1.0,
    white_background: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # features [..., C], depth [...], opacity [...], weights [..., S-1]
    out_dtype = colors.dtype
    if colors.dtype != densities.dtype:  # 16-bit colors with float32 densities: composite in float32
        colors = colors.to(densities.dtype)
    deltas = depths[..., 1:] - depths[..., :-1]
    colors_mid = (colors[..., :-1, :] + colors[..., 1:, :]) / 2
    densities_mid = (densities[..., :-1] + densities[..., 1:]) / 2
    depths_mid = (depths[..., :-1] + depths[..., 1:]) / 2
    sigma = F.softplus(densities_mid + density_bias)
    alpha = 1 - torch.exp(-sigma * deltas)
    shifted = torch.cat([torch.ones_like(alpha[..., :1]), 1 - alpha + 1e-10], dim=-1)
    weights = alpha * torch.cumprod(shifted, dim=-1)[..., :-1]
    features = torch.sum(weights.unsqueeze(-1) * colors_mid, dim=-2)
    opacity = weights.sum(dim=-1)
    num = torch.sum(weights * depths_mid, dim=-1)
    # Masked, never divided by zero: a ray with no opacity gets the far depth and no gradient.
    hit = opacity > 0
    safe = torch.where(hit, opacity, torch.ones_like(opacity))
    depth = torch.where(hit, num / safe, depths[..., -1])
    depth = torch.clamp(depth, depths[..., 0], depths[..., -1])
    if white_background:
        features = features + (1 - opacity).unsqueeze(-1)
    return features.to(out_dtype), depth, opacity, weights


def cell_centres(n: int, align_corners: bool, dtype: torch.dtype, device=None) -> Tensor:
    """Centres of n cells along one axis in normalised coordinates, in the pinned arithmetic of the contract.

    align_corners=False: (2j + 1) / n - 1; align_corners=True: -1 + 2j / (n - 1) (0 when n == 1).
    """
    j = torch.arange(n, dtype=dtype, device=device)
    if align_corners:
        if n == 1:
            return torch.zeros(1, dtype=dtype, device=device)
        return (j * 2) / torch.full_like(j, n - 1) - 1
    return (j * 2 + 1) / torch.full_like(j, n) - 1


def rasterize_points(
    points: Tensor,  # [B, N, 3]
    features: Tensor,  # [B, N, C]
    resolution: tuple[int, int],
    box_warp: float = 1.0,
    axes=((0, 1), (0, 2), (2, 1)),
    valid: Tensor | None = None,  # [B, N] bool
    max_distance: float | None = None,
    align_corners: bool = False,
) -> tuple[Tensor, Tensor]:  # planes [B, 3, C, H, W], index [B, 3, H, W] int64 (-1 = empty)
    H, W = resolution
    B, N, _ = points.shape
    C = features.shape[-1]
    dtype, device = points.dtype, points.device
    c = points * torch.tensor(2.0 / box_warp, dtype=dtype, device=device)
    u = cell_centres(W, align_corners, dtype, device)
    v = cell_centres(H, align_corners, dtype, device)
    inf = torch.tensor(float("inf"), dtype=dtype, device=device)
    max_d2 = None if max_distance is None else torch.tensor(max_distance * max_distance, dtype=dtype, device=device)
    index = torch.full((B, 3, H, W), -1, dtype=torch.long, device=device)
    rows = max(1, min(H, RASTER_CHUNK_ELEMENTS // max(1, W * N)))
    for b in range(B):
        for p, (ia, ib) in enumerate(axes):
            a, bb = c[b, :, ia], c[b, :, ib]  # [N]
            du2 = (u[:, None] - a[None, :]) * (u[:, None] - a[None, :])  # [W, N], each product rounded
            for i0 in range(0, H, rows):
                dv = v[i0 : i0 + rows, None] - bb[None, :]
                dv2 = dv * dv  # [h, N]
                d2 = du2[None, :, :] + dv2[:, None, :]  # [h, W, N]: fl(fl(du^2) + fl(dv^2)), no FMA
                if valid is not None:
                    d2 = d2.masked_fill(~valid[b][None, None, :], float("inf"))
                if N == 0:
                    continue
                best, arg = d2.min(dim=-1)  # the first minimum: ties go to the lowest index
                empty = best == inf
                if max_d2 is not None:
                    empty |= best > max_d2
                index[b, p, i0 : i0 + rows] = torch.where(empty, torch.full_like(arg, -1), arg)
    # Gather: an appended zero row serves the empty cells (-1 -> N).
    padded = torch.cat([features, features.new_zeros(B, 1, C)], dim=1)  # [B, N + 1, C]
    flat = torch.where(index < 0, torch.full_like(index, N), index).reshape(B, 3 * H * W, 1)
    planes = torch.gather(padded, 1, flat.expand(B, 3 * H * W, C))  # [B, 3HW, C]
    planes = planes.reshape(B, 3, H, W, C).permute(0, 1, 4, 2, 3).contiguous()
    return planes, index
