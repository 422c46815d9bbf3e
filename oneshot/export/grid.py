"""The avatar's density and colour inside the tri-plane box, through oneshot's ops: ``triplane_sample`` and the
decoder, in chunks of points, so that memory stays bounded at any grid resolution.

The grid spans the box [-box_warp/2, box_warp/2]^3 of the tri-planes (DESIGN.md §2): ``resolution`` points per
axis, evenly spaced from one face of the box to the other (both included), so the voxel side is
box_warp / (resolution - 1). ``grid[i, j, k]`` is the point (x_i, y_j, z_k): the first index runs along the world
x axis, then y, then z, and marching cubes on the grid gives vertices in (x, y, z) order.

Density is the decoder's raw σ (its first output, before the renderer's softplus(σ - 1)), the quantity EG3D and
Portrait4D threshold for their meshes. For EG3D's decoder (:class:`~oneshot.models.TriplaneDecoder`) only σ is
computed: the second layer's row for σ, not the 32 colour features (the density-only path); any other decoder
module is called whole and its σ kept.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import PLANE_AXES_GOHA, decoder_weights, triplane_sample

__all__ = ["GridTooLargeError", "grid_points", "grid_bytes", "available_memory", "density_grid", "sample_colors",
           "DEFAULT_CHUNK", "METHODS"]

#: Grid points per pass (about 200 MB of float32 temporaries with the paper's 64 hidden units; see
#: benchmarks/bench_export.py for the time and memory at other sizes).
DEFAULT_CHUNK = 1 << 18


class GridTooLargeError(ValueError):
    """The density grid (and the marching cubes that follow) would not fit in the memory allowed."""


def grid_points(resolution: int, box_warp: float = 1.0) -> Tensor:
    """The coordinates [resolution] (float64) of the grid along each axis: from -box_warp/2 to box_warp/2."""
    return torch.linspace(-box_warp / 2, box_warp / 2, resolution, dtype=torch.float64)


def grid_bytes(resolution: int, chunk: int = DEFAULT_CHUNK, channels: int = 32, hidden: int = 64) -> int:
    """Host memory an export at `resolution` needs at its peak (bytes): the float32 density grid with its
    one-voxel border, the temporaries of one chunk of points (points, sampled features, hidden units, outputs, in
    float32: an upper estimate for both paths) and an allowance for a head-like surface (6 R^2 cut cells, 2
    triangles and 2 vertices each). The surface's real size is known only after marching cubes: a noisy field
    (random weights) cuts far more cells (benchmarks/bench_export.py)."""
    r = int(resolution)
    grid = 4 * (r + 2) ** 3
    per_point = 4 * (3 + 2 * channels + 2 * hidden + 2 * (1 + channels))
    surface = 6 * 4 * r * r * 2 * (3 * 8 + 2 * 6 * 4)
    return grid + min(chunk, r ** 3) * per_point + surface


def available_memory() -> int | None:
    """Bytes of host memory available now (Linux: MemAvailable; elsewhere: free physical pages), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_resolution(resolution, *, chunk: int = DEFAULT_CHUNK, channels: int = 32, hidden: int = 64,
                     max_bytes: int | None = None) -> int:
    """`resolution` as an int, checked: >= 2, and an export at it fits in `max_bytes` (default: the memory
    available now, see :func:`available_memory`); otherwise :class:`GridTooLargeError`, raised before anything
    is allocated."""
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or resolution < 2:
        raise ValueError(f"resolution must be an int >= 2 (grid points per axis), got {resolution!r}")
    need = grid_bytes(int(resolution), chunk, channels, hidden)
    limit = available_memory() if max_bytes is None else int(max_bytes)
    if limit is not None and need > limit:
        fit = int(resolution)
        while fit > 2 and grid_bytes(fit, chunk, channels, hidden) > limit:
            fit = int(fit * 0.9)
        where = "the memory available now" if max_bytes is None else "max_bytes"
        raise GridTooLargeError(f"resolution {resolution}: an export needs about {need / 2**20:,.0f} MiB (a "
                                f"{resolution}^3 float32 density grid and its surface), more than {where} "
                                f"({limit / 2**20:,.0f} MiB); use resolution <= {fit}")
    return int(resolution)


def _check_planes(planes: Tensor) -> Tensor:
    if not isinstance(planes, Tensor) or planes.dim() != 5 or planes.shape[:2] != (1, 3):
        got = list(planes.shape) if isinstance(planes, Tensor) else type(planes).__name__
        raise ValueError(f"planes must be one avatar's tri-planes [1, 3, C, H, W], got {got}")
    if not planes.is_floating_point():
        raise TypeError(f"planes must be floating point, got {planes.dtype}")
    return planes


def _axis_pairs(axes) -> tuple[tuple[int, int], ...]:
    """The three (a, b) coordinate pairs of `axes` (``PLANE_AXES_GOHA`` style), checked."""
    try:
        pairs = tuple((int(a), int(b)) for a, b in axes)
    except (TypeError, ValueError):
        pairs = ()
    if len(pairs) != 3 or any(a == b or not (0 <= a <= 2 and 0 <= b <= 2) for a, b in pairs):
        raise ValueError(f"axes must be three pairs of distinct coordinates in 0..2 (e.g. {PLANE_AXES_GOHA}), got "
                         f"{axes!r}")
    return pairs


def _pointwise(planes: Tensor, decoder, coords: Tensor, box_warp: float, axes, backend):
    """The composed path: (i0, i1) -> σ [i1 - i0, R, R] of the grid's x-slabs i0 .. i1 - 1, each point looked up
    by ``triplane_sample`` and decoded (density-only for EG3D's decoder: σ's row of the second layer)."""
    from ..models.decoder import TriplaneDecoder

    R = len(coords)
    if isinstance(decoder, TriplaneDecoder):
        w1, b1, w2, b2 = (t.detach() for t in decoder_weights(decoder))

        def decode(feats):
            return F.linear(F.softplus(F.linear(feats.to(w1.dtype), w1, b1)), w2[:1], b2[:1])[..., 0]
    else:
        def decode(feats):
            return decoder(feats)[0]

    def slabs(i0, i1):
        x, y, z = torch.meshgrid(coords[i0:i1], coords, coords, indexing="ij")
        pts = torch.stack([x, y, z], -1).reshape(1, -1, 3)
        feats = triplane_sample(planes, pts, box_warp=box_warp, axes=axes, backend=backend)
        return decode(feats).float().reshape(i1 - i0, R, R)
    return slabs


def _factorized(planes: Tensor, decoder, coords: Tensor, box_warp: float, axes, backend, chunk: int):
    """The lattice path: on a grid, plane p (coordinates a, b) is read at R x R points only, whatever the third
    coordinate, so its R^2 samples (``triplane_sample`` at the lattice) are taken once and broadcast; EG3D's
    first layer is linear, so it is applied to each plane's samples before the sum (the mean's 1/3 folded in):
    per grid point only the three hidden vectors' sum, the softplus and σ's row remain. Same values as
    :func:`_pointwise` up to rounding."""
    from ..models.decoder import TriplaneDecoder

    R, C = len(coords), planes.shape[2]
    pairs = _axis_pairs(axes)
    eg3d = isinstance(decoder, TriplaneDecoder)
    if eg3d:
        w1, b1, w2, b2 = (t.detach().float() for t in decoder_weights(decoder))
    lattices = []  # per plane: [R, R, K] indexed [index along its first axis, index along its second]
    for p, (a, b) in enumerate(pairs):
        ia, ib = torch.meshgrid(torch.arange(R, device=coords.device), torch.arange(R, device=coords.device),
                                indexing="ij")
        ia, ib = ia.reshape(-1), ib.reshape(-1)
        rows = []
        for s in range(0, R * R, chunk):
            pts = torch.zeros(min(chunk, R * R - s), 3, device=coords.device, dtype=coords.dtype)
            pts[:, a], pts[:, b] = coords[ia[s:s + chunk]], coords[ib[s:s + chunk]]
            g = triplane_sample(planes, pts[None], box_warp=box_warp, axes=axes, reduce="none",
                                backend=backend)[0, p].float()  # [m, C]
            rows.append(g @ (w1.T / 3) if eg3d else g / 3)
        lattice = torch.cat(rows).reshape(R, R, -1)
        if p == 0 and eg3d:
            lattice = lattice + b1  # the first layer's bias, once (O(R^2), not per grid point)
        lattices.append((lattice.transpose(0, 1).contiguous(), b, a) if a > b else (lattice, a, b))
    # the (0, 1) and (0, 2) planes vary along x; (1, 2) is the same for every x-slab
    lattices.sort(key=lambda t: (t[1], t[2]))

    def view(lattice, a, b, i0, i1):  # [R_a, R_b, K] (a < b) -> broadcastable to [i1 - i0, R, R, K]
        if (a, b) == (0, 1):
            return lattice[i0:i1, :, None]
        if (a, b) == (0, 2):
            return lattice[i0:i1, None]
        return lattice[None]  # (1, 2): the same for every x

    def slabs(i0, i1):
        first, *rest = (view(*lat, i0, i1) for lat in lattices)
        total = first + rest[0]  # [i1 - i0, R, R, K]: one allocation, the third plane added in place
        total += rest[1]
        if eg3d:
            return torch.mv(F.softplus(total).reshape(-1, w1.shape[0]), w2[0]).add_(b2[0]).reshape(i1 - i0, R, R)
        feats = total.expand(i1 - i0, R, R, C).reshape(1, -1, C)
        return decoder(feats.to(planes.dtype if planes.dtype in (torch.float32, torch.float64) else torch.float32)
                       )[0].float().reshape(i1 - i0, R, R)
    return slabs


METHODS = ("lattice", "pointwise")


@torch.no_grad()
def density_grid(planes: Tensor, decoder: nn.Module, resolution: int, *, box_warp: float = 1.0,
                 axes: tuple = PLANE_AXES_GOHA, chunk: int = DEFAULT_CHUNK,
                 backend: str | None = None, max_bytes: int | None = None,
                 pad: float | None = None, method: str = "lattice", progress: bool = False) -> np.ndarray:
    """The decoder's raw density σ on a resolution^3 grid over the tri-plane box.

    Args:
        planes: [1, 3, C, H, W] one avatar's tri-planes (any float dtype; on any device: the sampling runs
            there, the grid is gathered in host memory).
        decoder: a :class:`~oneshot.models.TriplaneDecoder` (density-only evaluation), or any module mapping
            features [1, M, C] to (σ [1, M], features [1, M, Co]).
        resolution: grid points per axis (>= 2); checked against `max_bytes` (default: the memory available)
            before anything is allocated (:class:`GridTooLargeError`).
        box_warp: the tri-planes' box side (as the renderer's).
        axes: the planes' axes (as the renderer's).
        chunk: grid points per pass (bounds the temporaries; whole x-slabs of R^2 points at a time at least).
        backend: backend of ``triplane_sample`` (None: the fastest available).
        pad: when set, the grid comes back with a one-voxel border of this value on every side
            ([resolution + 2]^3): a value below the iso level closes surfaces cut by the box.
        method: "lattice" (each plane sampled at the R^2 lattice points once and broadcast, the decoder's first
            layer applied per plane: O(R^2) lookups instead of O(R^3)) or "pointwise" (``triplane_sample`` at
            every grid point and the decoder: the composed ops, the reference the lattice path is tested against).
        progress: a progress bar over the x-slabs (on stderr, when it is a terminal).

    Returns:
        float32 numpy array [R, R, R] (or [R + 2]^3 with `pad`), index [i, j, k] = point (x_i, y_j, z_k) of
        :func:`grid_points` (shifted by one with `pad`).
    """
    planes = _check_planes(planes)
    if not (isinstance(chunk, int) and chunk >= 1):
        raise ValueError(f"chunk must be an int >= 1, got {chunk!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    hidden = decoder.net[0].out_features if hasattr(decoder, "net") else 64
    R = check_resolution(resolution, chunk=chunk, channels=planes.shape[2], hidden=hidden, max_bytes=max_bytes)
    p = 1 if pad is not None else 0
    out = np.full((R + 2 * p,) * 3, np.float32(pad if pad is not None else 0), dtype=np.float32)
    inner = out[p:R + p, p:R + p, p:R + p] if p else out
    coords = grid_points(R, box_warp).to(planes.device, torch.float32)
    slabs = (_factorized(planes, decoder, coords, box_warp, axes, backend, chunk) if method == "lattice"
             else _pointwise(planes, decoder, coords, box_warp, axes, backend))
    step = max(1, chunk // (R * R))  # x-slabs per pass
    from .._progress import progress_bar

    with progress_bar(R, desc="density grid", unit="slab", enabled=progress) as bar:
        for i0 in range(0, R, step):
            i1 = min(R, i0 + step)
            inner[i0:i1] = slabs(i0, i1).cpu().numpy()
            bar.update(i1 - i0)
    return out


@torch.no_grad()
def sample_colors(planes: Tensor, decoder: nn.Module, points: Tensor, *, box_warp: float = 1.0,
                  axes: tuple = PLANE_AXES_GOHA, chunk: int = DEFAULT_CHUNK,
                  backend: str | None = None) -> Tensor:
    """The decoder's colour (its first three features, RGB in [0, 1]) at points.

    Args:
        planes: [1, 3, C, H, W] one avatar's tri-planes.
        decoder: a module mapping features [1, M, C] to (σ [1, M], features [1, M, Co >= 3]) in [0, 1]
            (EG3D's: sigmoid * 1.002 - 0.001; the model's images are features * 2 - 1).
        points: [N, 3] world coordinates (float32).

    Returns:
        [N, 3] float32 RGB in [0, 1] (clamped), on the device of `points`.
    """
    planes = _check_planes(planes)
    if not isinstance(points, Tensor) or points.dim() != 2 or points.shape[1] != 3:
        got = list(points.shape) if isinstance(points, Tensor) else type(points).__name__
        raise ValueError(f"points must be [N, 3], got {got}")
    out = []
    for s in range(0, points.shape[0], chunk):
        pts = points[s:s + chunk].to(planes.device, torch.float32)[None]
        feats = triplane_sample(planes, pts, box_warp=box_warp, axes=axes, backend=backend)
        color = decoder(feats)[1][0, :, :3]
        if color.shape[-1] != 3:
            raise ValueError(f"the decoder must give >= 3 feature channels (RGB first), got {color.shape[-1]}")
        out.append(color.float().clamp(0, 1).to(points.device))
    return torch.cat(out) if out else points.new_zeros(0, 3)


def voxel_size(resolution: int, box_warp: float = 1.0) -> float:
    """The grid's spacing: box_warp / (resolution - 1)."""
    return box_warp / (resolution - 1)


def finite_or_raise(grid: np.ndarray) -> None:
    """A ValueError naming the count of non-finite densities (a broken checkpoint), if there are any."""
    bad = int(np.size(grid) - np.isfinite(grid).sum())
    if bad:
        raise ValueError(f"the density grid has {bad} non-finite values (NaN or inf): the avatar's weights or "
                         f"planes are broken")

