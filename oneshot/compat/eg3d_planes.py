"""EG3D's plane functions: ``generate_planes``, ``project_onto_planes``, ``sample_from_planes``.

EG3D describes each plane by a 3x3 matrix P; a point x projects to the first two coordinates of ``x @ inv(P)``.
For P a permutation matrix (EG3D's, GOHA's and every other axis-aligned choice) that is the pair of coordinates
(argmax P[0], argmax P[1]), which is oneshot's ``axes=`` convention (see :func:`axes_of`), so the sampling runs on
``oneshot.ops.triplane_sample``. Any other matrices (rotated planes, more or fewer than three) take the
general projection through ``grid_sample``.

EG3D's planes are xy, xz and **zx**: ``PLANE_AXES_EG3D = ((0, 1), (0, 2), (2, 0))``; the third plane repeats the
x axis of the second (the duplicated plane GOHA fixed: ``PLANE_AXES_GOHA = ((0, 1), (0, 2), (2, 1))``).
"""

from __future__ import annotations

import math
import numbers
import weakref

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops import PLANE_AXES_EG3D, PLANE_AXES_GOHA, check_axes, triplane_sample

__all__ = ["generate_planes", "project_onto_planes", "sample_from_planes", "plane_matrices", "axes_of",
           "resolve_axes", "PLANE_AXES_EG3D", "PLANE_AXES_GOHA"]

_NAMED_AXES = {"eg3d": PLANE_AXES_EG3D, "goha": PLANE_AXES_GOHA}


def _describe(t) -> str:
    return str(list(t.shape)) if isinstance(t, Tensor) else type(t).__name__


def resolve_axes(axes) -> tuple[tuple[int, int], ...]:
    """``"eg3d"``, ``"goha"`` or three (a, b) coordinate pairs -> three pairs (checked)."""
    if isinstance(axes, str):
        if axes not in _NAMED_AXES:
            raise ValueError(f"plane_axes must be 'eg3d', 'goha' or three (a, b) coordinate pairs, got {axes!r}")
        return _NAMED_AXES[axes]
    flat = check_axes(axes)
    return tuple((flat[2 * p], flat[2 * p + 1]) for p in range(3))


def plane_matrices(axes=PLANE_AXES_EG3D) -> Tensor:
    """[3, 3, 3] float32 plane matrices in EG3D's convention for the coordinate pairs `axes` ("eg3d", "goha" or
    three (a, b) pairs): plane p's rows are the unit vectors e_a, e_b and the remaining axis, so that
    ``project_onto_planes`` gives (x_a, x_b). ``plane_matrices("eg3d")`` equals :func:`generate_planes`."""
    pairs = resolve_axes(axes)
    eye = torch.eye(3, dtype=torch.float32)
    return torch.stack([eye[[a, b, 3 - a - b]] for a, b in pairs])


def generate_planes() -> Tensor:
    """EG3D's plane matrices, [3, 3, 3] float32: the xy, xz and zx planes (EG3D's third plane, not GOHA's zy)."""
    return plane_matrices(PLANE_AXES_EG3D)


def project_onto_planes(planes: Tensor,  # [n_planes, 3, 3]
                        coordinates: Tensor,  # [N, M, 3]
                        ) -> Tensor:  # [N * n_planes, M, 2]
    """EG3D's projection: the first two coordinates of ``coordinates @ inv(planes[p])`` for every plane p,
    batch-major ([N * n_planes, M, 2], plane p of batch n at row n * n_planes + p)."""
    if not isinstance(planes, Tensor) or planes.dim() != 3 or tuple(planes.shape[1:]) != (3, 3):
        raise ValueError(f"planes must be [n_planes, 3, 3] plane matrices, got {_describe(planes)}")
    if not isinstance(coordinates, Tensor) or coordinates.dim() != 3 or coordinates.shape[-1] != 3:
        raise ValueError(f"coordinates must be [N, M, 3], got {_describe(coordinates)}")
    N, M, _ = coordinates.shape
    inverse = torch.linalg.inv(planes.to(coordinates.dtype))  # [n, 3, 3]
    projected = torch.matmul(coordinates.unsqueeze(1), inverse.unsqueeze(0))  # [N, n, M, 3]
    return projected.reshape(N * planes.shape[0], M, 3)[..., :2]


# axes_of() reads the matrices on the host; keyed by the tensor (weakly) and its version so that a renderer whose
# plane_axes live on a GPU does not synchronise on every call.
_AXES_CACHE: dict[int, tuple] = {}


def axes_of(plane_axes: Tensor):
    """The coordinate pairs of three axis-aligned plane matrices ([3, 3, 3], each a permutation matrix), or None
    for any other plane matrices (handled by the general projection)."""
    key = id(plane_axes)
    hit = _AXES_CACHE.get(key)
    if hit is not None and hit[0]() is plane_axes and hit[1] == plane_axes._version:
        return hit[2]
    pairs = None
    if plane_axes.dim() == 3 and tuple(plane_axes.shape) == (3, 3, 3):
        m = plane_axes.detach().to("cpu", torch.float64)
        binary = bool(((m == 0) | (m == 1)).all())
        if binary and bool((m.sum(1) == 1).all()) and bool((m.sum(2) == 1).all()):
            pairs = tuple((int(m[p, 0].argmax()), int(m[p, 1].argmax())) for p in range(3))
    if len(_AXES_CACHE) > 64:
        for k in [k for k, v in _AXES_CACHE.items() if v[0]() is None]:
            del _AXES_CACHE[k]
    _AXES_CACHE[key] = (weakref.ref(plane_axes), plane_axes._version, pairs)
    return pairs


def _check_planes_and_points(plane_features, coordinates, n_planes: int | None):
    if not isinstance(plane_features, Tensor) or plane_features.dim() != 5:
        raise ValueError(f"plane_features must be [N, n_planes, C, H, W], got {_describe(plane_features)}")
    if not isinstance(coordinates, Tensor) or coordinates.dim() != 3 or coordinates.shape[-1] != 3:
        raise ValueError(f"coordinates must be [N, M, 3], got {_describe(coordinates)}")
    if coordinates.shape[0] != plane_features.shape[0]:
        raise ValueError(f"coordinates must have the batch size of plane_features ({plane_features.shape[0]}), got "
                         f"{coordinates.shape[0]}")
    if n_planes is not None and plane_features.shape[1] != n_planes:
        raise ValueError(f"plane_features must have as many planes as plane_axes ({n_planes}), got "
                         f"{plane_features.shape[1]} ({list(plane_features.shape)})")


def _box_scale(box_warp) -> float:
    if box_warp is None:
        raise ValueError("box_warp is required: the side of the box the planes span (EG3D's rendering_options"
                         "['box_warp'], e.g. 1)")
    if isinstance(box_warp, bool) or not isinstance(box_warp, numbers.Real) or not 0 < float(box_warp) < math.inf:
        raise ValueError(f"box_warp must be a positive finite number, got {box_warp!r}")
    return float(box_warp)


def sample_from_planes(plane_axes: Tensor,  # [n_planes, 3, 3]
                       plane_features: Tensor,  # [N, n_planes, C, H, W]
                       coordinates: Tensor,  # [N, M, 3]
                       mode='bilinear', padding_mode='zeros', box_warp=None,
                       ) -> Tensor:  # [N, n_planes, M, C]
    """EG3D's tri-plane lookup: the features of every plane at every point, [N, n_planes, M, C].

    Points are scaled by 2 / box_warp and projected onto each plane (:func:`project_onto_planes`), then read with
    ``grid_sample(align_corners=False)`` and zero padding. Axis-aligned planes with bilinear reads (EG3D's case)
    run on ``oneshot.ops.triplane_sample``; other matrices or modes on ``grid_sample``. Differentiable w.r.t.
    plane_features and coordinates. As in EG3D the lookup runs in float32 (float64 planes: float64).
    """
    if padding_mode != "zeros":
        raise ValueError(f"padding_mode must be 'zeros' (the only one EG3D's renderer supports), got {padding_mode!r}")
    if mode not in ("bilinear", "nearest", "bicubic"):
        raise ValueError(f"mode must be 'bilinear', 'nearest' or 'bicubic' (grid_sample's), got {mode!r}")
    if not isinstance(plane_axes, Tensor) or plane_axes.dim() != 3 or tuple(plane_axes.shape[1:]) != (3, 3):
        raise ValueError(f"plane_axes must be [n_planes, 3, 3] plane matrices (generate_planes()), got "
                         f"{_describe(plane_axes)}")
    _check_planes_and_points(plane_features, coordinates, plane_axes.shape[0])
    box_warp = _box_scale(box_warp)
    pairs = axes_of(plane_axes) if mode == "bilinear" else None
    if pairs is not None:
        return sample_axis_aligned(plane_features, coordinates, pairs, box_warp)
    return _sample_general(plane_axes, plane_features, coordinates, mode, box_warp)


def _lookup_dtype(plane_features: Tensor) -> torch.dtype:
    return torch.float64 if plane_features.dtype == torch.float64 else torch.float32


def sample_axis_aligned(plane_features: Tensor,  # [N, 3, C, H, W]
                        coordinates: Tensor,  # [N, M, 3]
                        pairs, box_warp: float) -> Tensor:  # [N, 3, M, C]
    """``sample_from_planes`` for axis-aligned planes given as coordinate pairs, on ``triplane_sample``."""
    points = coordinates.to(_lookup_dtype(plane_features))
    if plane_features.dtype not in (torch.float16, torch.bfloat16, points.dtype):
        plane_features = plane_features.to(points.dtype)
    return triplane_sample(plane_features, points, box_warp=box_warp, axes=pairs, reduce="none")


def _sample_general(plane_axes, plane_features, coordinates, mode, box_warp) -> Tensor:
    N, n, C, H, W = plane_features.shape
    M = coordinates.shape[1]
    dtype = _lookup_dtype(plane_features)
    scaled = (2 / box_warp) * coordinates
    grid = project_onto_planes(plane_axes.to(coordinates.device), scaled).unsqueeze(1).to(dtype)  # [N n, 1, M, 2]
    out = F.grid_sample(plane_features.reshape(N * n, C, H, W).to(dtype), grid, mode=mode, padding_mode="zeros",
                        align_corners=False)  # [N n, C, 1, M]
    return out.permute(0, 3, 2, 1).reshape(N, n, M, C)
