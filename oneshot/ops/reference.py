"""Pure-PyTorch twins of every oneshot op: the test oracle, the fallback and the benchmark baseline.

Written the way the anchor code bases do it, so benchmark ratios against them mean something:
``triplane_sample`` on ``grid_sample`` (EG3D), ``ray_march`` as EG3D's vectorised MipRayMarcher2 (cumprod over
samples), ``render_triplane`` as the two composed around EG3D's decoder MLP (autograd keeping every intermediate),
``rasterize_points`` as distance + argmin (the released GOHA code), but in chunks so that no dense cells x points
matrix larger than ``RASTER_CHUNK_ELEMENTS`` is ever built, and ``rasterize_mesh`` as vectorised edge functions.

These functions do not check their arguments: call them through :mod:`oneshot.ops` with
``backend="reference"`` unless the inputs are known to be well formed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import OUTSIDE_DENSITY, PLANE_AXES_GOHA

__all__ = ["triplane_sample", "ray_march", "render_triplane", "rasterize_points", "rasterize_mesh", "cell_centres",
           "RASTER_CHUNK_ELEMENTS"]

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
    axes=PLANE_AXES_GOHA,
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


def render_triplane(
    planes: Tensor,  # [B, 3, C, H, W]
    origins: Tensor,  # [B, R, 3]
    directions: Tensor,  # [B, R, 3]
    depths: Tensor,  # [B, R, S]
    w1: Tensor,  # [hidden, C]
    b1: Tensor,  # [hidden]
    w2: Tensor,  # [1 + Co, hidden]
    b2: Tensor,  # [1 + Co]
    box_warp: float = 1.0,
    axes=PLANE_AXES_GOHA,
    clip_to_box: bool = False,
    density_bias: float = -1.0,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # features [B, R, Co], depth [B, R], opacity [B, R], weights [B, R, S-1]
    """The fused op's contract composed: points o + t d -> :func:`triplane_sample` ("mean") -> linear / softplus /
    linear -> sigma = y_0 (OUTSIDE_DENSITY outside the box with `clip_to_box`), colour = sigmoid(y_1..) * 1.002 -
    0.001 -> :func:`ray_march`. 16-bit planes are sampled in float32."""
    B, R, S = depths.shape
    pts = (origins[:, :, None] + depths[..., None] * directions[:, :, None]).reshape(B, R * S, 3)
    if planes.dtype != pts.dtype:  # 16-bit planes: sampled in float32
        planes = planes.to(pts.dtype)
    feats = triplane_sample(planes, pts, box_warp, axes, "mean")
    y = F.linear(F.softplus(F.linear(feats, w1, b1)), w2, b2)
    sigma = y[..., 0]
    color = torch.sigmoid(y[..., 1:]) * (1 + 2 * 0.001) - 0.001
    if clip_to_box:
        inside = pts.abs().amax(-1) <= box_warp / 2
        sigma = torch.where(inside, sigma, sigma.new_tensor(OUTSIDE_DENSITY))
    return ray_march(color.reshape(B, R, S, -1), sigma.reshape(B, R, S), depths, float(density_bias), False)


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
    axes=PLANE_AXES_GOHA,
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


def _edge(ax, ay, bx, by, px, py):
    """(b - a) x (p - a), each operation rounded (csrc/mesh/mesh.h)."""
    return (bx - ax) * (py - ay) - (by - ay) * (px - ax)


def _inside_edge(e, ax, ay, bx, by):
    dy, dx = by - ay, bx - ax
    return (e > 0) | ((e == 0) & ((dy < 0) | ((dy == 0) & (dx > 0))))  # the top-left rule


#: Largest number of (face, candidate pixel) pairs :func:`rasterize_mesh` tests at once.
MESH_CHUNK_PAIRS = 1 << 22


def rasterize_mesh(
    vertices: Tensor,  # [B, V, 3]: pixel x, y (y down, pixel (i, j) centred at (j + 0.5, i + 0.5)), view depth z
    faces: Tensor,  # [F, 3] int
    resolution: tuple[int, int],
) -> tuple[Tensor, Tensor, Tensor]:  # face_index [B, H, W] int64, bary [B, H, W, 3], depth [B, H, W]
    """The contract of csrc/mesh/mesh.h in vectorised PyTorch (double, the same rounding): every face's
    candidate pixel centres (its bounding box) are expanded into (face, pixel) pairs, in chunks, tested with the
    edge functions, and resolved per pixel to the smallest depth, ties to the lowest face index."""
    H, W = resolution
    B = vertices.shape[0]
    dev, out_dtype = vertices.device, vertices.dtype
    index = torch.full((B, H, W), -1, dtype=torch.long, device=dev)
    bary = torch.zeros((B, H, W, 3), dtype=out_dtype, device=dev)
    depth = torch.full((B, H, W), float("inf"), dtype=out_dtype, device=dev)
    F = faces.shape[0]
    if B == 0 or F == 0:
        return index, bary, depth
    fl = faces.long()
    for b in range(B):
        tri = vertices[b].double()[fl]  # [F, 3 vertices, 3 coords]
        x, y, z = tri[..., 0], tri[..., 1], tri[..., 2]
        ok = torch.isfinite(tri).all(dim=(1, 2)) & (z > 0).all(dim=1)
        area = _edge(x[:, 0], y[:, 0], x[:, 1], y[:, 1], x[:, 2], y[:, 2])
        ok &= area != 0
        neg = area < 0  # normalise the winding: swap slots 1 and 2
        slot = torch.where(neg[:, None], torch.tensor([0, 2, 1], device=dev), torch.tensor([0, 1, 2], device=dev))
        x, y, z = x.gather(1, slot), y.gather(1, slot), z.gather(1, slot)
        area = torch.where(neg, -area, area)
        iz = torch.where(ok[:, None], 1.0 / z, torch.zeros_like(z))
        lo = lambda v, n: torch.ceil(v.amin(1) - 0.5).clamp(-1, n).long().clamp(min=0)  # noqa: E731
        hi = lambda v, n: torch.floor(v.amax(1) - 0.5).clamp(-1, n).long().clamp(max=n - 1)  # noqa: E731
        j0, j1 = lo(torch.nan_to_num(x), W), hi(torch.nan_to_num(x), W)
        i0, i1 = lo(torch.nan_to_num(y), H), hi(torch.nan_to_num(y), H)
        nx, ny = (j1 - j0 + 1).clamp(min=0), (i1 - i0 + 1).clamp(min=0)
        count = torch.where(ok, nx * ny, torch.zeros_like(nx))
        best_d = torch.full((H * W,), float("inf"), dtype=torch.float64, device=dev)
        best_f = torch.full((H * W,), -1, dtype=torch.long, device=dev)
        best_b = torch.zeros((H * W, 3), dtype=torch.float64, device=dev)
        ends = torch.cumsum(count, 0)
        f_start = 0
        while f_start < F:  # chunks of whole faces, in index order
            base = int(ends[f_start - 1]) if f_start > 0 else 0
            f_end = int(torch.searchsorted(ends, base + MESH_CHUNK_PAIRS, right=True))
            f_end = max(f_end, f_start + 1)
            fid = torch.repeat_interleave(torch.arange(f_start, f_end, device=dev), count[f_start:f_end])
            if fid.numel():
                k = torch.arange(fid.numel(), device=dev) - (torch.cumsum(count[f_start:f_end], 0) - count[f_start:f_end])[fid - f_start]
                i = i0[fid] + torch.div(k, nx[fid], rounding_mode="floor")
                j = j0[fid] + k % nx[fid]
                px, py = j.double() + 0.5, i.double() + 0.5
                X, Y = x[fid], y[fid]
                e0 = _edge(X[:, 1], Y[:, 1], X[:, 2], Y[:, 2], px, py)
                e1 = _edge(X[:, 2], Y[:, 2], X[:, 0], Y[:, 0], px, py)
                e2 = _edge(X[:, 0], Y[:, 0], X[:, 1], Y[:, 1], px, py)
                inside = (_inside_edge(e0, X[:, 1], Y[:, 1], X[:, 2], Y[:, 2])
                          & _inside_edge(e1, X[:, 2], Y[:, 2], X[:, 0], Y[:, 0])
                          & _inside_edge(e2, X[:, 0], Y[:, 0], X[:, 1], Y[:, 1]))
                fid, pix = fid[inside], (i * W + j)[inside]
                a = area[fid]
                bs = torch.stack([e0[inside] / a, e1[inside] / a, e2[inside] / a], dim=1)
                I = iz[fid]
                d = 1.0 / ((bs[:, 0] * I[:, 0] + bs[:, 1] * I[:, 1]) + bs[:, 2] * I[:, 2])
                # Per pixel: the smallest depth of this chunk, then the lowest face attaining it.
                dmin = torch.full((H * W,), float("inf"), dtype=torch.float64, device=dev)
                dmin.scatter_reduce_(0, pix, d, reduce="amin")
                at_min = d == dmin[pix]
                fmin = torch.full((H * W,), F, dtype=torch.long, device=dev)
                fmin.scatter_reduce_(0, pix[at_min], fid[at_min], reduce="amin")
                win = at_min & (fid == fmin[pix])
                wp = pix[win]
                better = dmin[wp] < best_d[wp]  # strict: an earlier chunk (lower faces) keeps equal depths
                wp, wb, wf = wp[better], bs[win][better], fid[win][better]
                best_d[wp] = dmin[wp]
                best_f[wp] = wf
                # back to the faces' own vertex order
                best_b[wp] = torch.zeros_like(wb).scatter_(1, slot[wf], wb)
            f_start = f_end
        hit = best_f >= 0
        index[b] = best_f.reshape(H, W)
        bary[b] = torch.where(hit[:, None], best_b, torch.zeros_like(best_b)).reshape(H, W, 3).to(out_dtype)
        depth[b] = best_d.reshape(H, W).to(out_dtype)
    return index, bary, depth
