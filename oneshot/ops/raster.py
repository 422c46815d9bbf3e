"""rasterize_points: nearest-point splatting of per-point features onto the three tri-planes."""

from __future__ import annotations

import numbers
from typing import Optional

import torch
from torch import Tensor

from .. import _extension
from . import reference
from ._backend import resolve_backend
from ._common import (
    PLANE_AXES_GOHA,
    autocast_geometry,
    axes_pairs,
    check_axes,
    check_batch,
    check_box_warp,
    check_dtypes,
    check_resolution,
    check_tensor,
    shape_of,
)
from ._registry import once, register_geometry_autocast

__all__ = ["rasterize_points"]


def rasterize_points(
    points: Tensor,  # [B, N, 3]
    features: Tensor,  # [B, N, C]
    resolution,
    *,
    box_warp: float = 1.0,
    axes=PLANE_AXES_GOHA,
    valid: Tensor | None = None,  # [B, N] bool
    max_distance: float | None = None,
    align_corners: bool = False,
    backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    """Give every cell of the three planes the feature of the nearest point in that plane's projection.

    Cell (i, j) has centre (u_j, v_i): u_j = (2j + 1) / W - 1 (align_corners=False) or -1 + 2j / (W - 1)
    (align_corners=True; 0 when W == 1), likewise v_i with H. Plane p projects c = points * 2 / box_warp to
    ``(c[axes[p][0]], c[axes[p][1]])``. The nearest valid point is exact, with the arithmetic pinned so that all
    backends agree: d^2 = du*du + dv*dv rounded per operation (no fused multiply-add), the smallest d^2 wins,
    equal d^2 go to the lowest point index. A cell with no valid point, or whose nearest d^2 exceeds
    max_distance^2 (computed in double, rounded to the dtype), is empty. NaN coordinates give unspecified
    results.

    Args:
        points: [B, N, 3] points in world units.
        features: [B, N, C] per-point features.
        resolution (int | tuple[int, int]): H = W as an int, or an (H, W) pair.
        box_warp: side of the box the planes span.
        axes (tuple[tuple[int, int], ...]): the coordinate pair of each plane (``PLANE_AXES_GOHA`` or
            ``PLANE_AXES_EG3D``).
        valid: optional [B, N] bool; False points are ignored.
        max_distance: optional radius (normalised plane units) beyond which cells stay empty.
        align_corners: cell-centre convention (the released GOHA code uses True at 128 x 128).
        backend: None/"auto", "reference", "native" or "triton".

    Returns:
        planes [B, 3, C, H, W] in the dtype of features (0 where empty) and index [B, 3, H, W] int64 (the
        chosen point, -1 where empty). Differentiable w.r.t. features (a scatter-add through index).

    dtypes: points and features share a dtype, or features are float16 / bfloat16 with float32 points (the
    search runs in the points' dtype). Under ``torch.autocast``, 16-bit points are cast to float32.
    """
    check_tensor("points", points, "[B, N, 3]", 3)
    if points.shape[2] != 3:
        raise ValueError(f"points must be [B, N, 3], got {shape_of(points)}")
    check_tensor("features", features, "[B, N, C]", 3)
    check_batch("features", features, "points", points)
    if features.shape[1] != points.shape[1]:
        raise ValueError(f"features must be [B, N, C] with the N of points ({points.shape[1]}), got {shape_of(features)}")
    (points,) = autocast_geometry(features.device.type, points)
    check_dtypes("features", features, ("points",), (points,))
    H, W = check_resolution(resolution)
    box_warp = check_box_warp(box_warp)
    flat_axes = check_axes(axes)
    if valid is not None:
        if not isinstance(valid, Tensor):
            raise TypeError(f"valid must be a bool tensor [B, N] or None, got {type(valid).__name__}")
        if valid.dtype != torch.bool:
            raise TypeError(f"valid must be a bool tensor [B, N], got dtype {valid.dtype}")
        if tuple(valid.shape) != tuple(points.shape[:2]):
            raise ValueError(f"valid must be [B, N] = {shape_of(points)[:2]}, got {shape_of(valid)}")
        if valid.device != points.device:
            raise ValueError(f"valid must be on the device of points ({points.device}), got {valid.device}")
    if max_distance is not None and not isinstance(max_distance, torch.SymFloat):
        if isinstance(max_distance, bool) or not isinstance(max_distance, numbers.Real):
            raise TypeError(f"max_distance must be a number or None, got {type(max_distance).__name__}")
        max_distance = float(max_distance)
        if not max_distance >= 0:  # also rejects NaN
            raise ValueError(f"max_distance must be >= 0, got {max_distance}")
    align_corners = bool(align_corners)
    impl = resolve_backend(backend, "rasterize_points", features.device, features.dtype, points.dtype)
    if impl == "reference":
        return reference.rasterize_points(
            points, features, (H, W), box_warp, axes_pairs(flat_axes), valid, max_distance, align_corners
        )
    if impl == "triton":
        _register_triton()
    op = torch.ops.oneshot.rasterize_points_triton if impl == "triton" else torch.ops.oneshot.rasterize_points
    planes, index = op(points, features, H, W, box_warp, flat_axes, valid, max_distance, align_corners)
    return planes, index


def register_autograd(op: str, backward_op: str) -> None:
    """Autograd of ``oneshot::<op>`` through ``oneshot::<backward_op>`` (the native and the Triton pair): a
    scatter-add of the planes' gradient through the index, to the features only."""

    def setup_context(ctx, inputs, output):
        ctx.num_points = inputs[0].shape[1]
        ctx.save_for_backward(output[1])
        ctx.set_materialize_grads(False)

    def backward(ctx, grad_planes, grad_index):
        (index,) = ctx.saved_tensors
        grad_features = None
        if ctx.needs_input_grad[1] and grad_planes is not None:
            grad_features = getattr(torch.ops.oneshot, backward_op)(grad_planes, index, ctx.num_points)
        return (None, grad_features) + (None,) * 7

    torch.library.register_autograd(f"oneshot::{op}", backward, setup_context=setup_context)


def _register() -> None:
    @torch.library.register_fake("oneshot::rasterize_points")
    def _fake(points, features, height, width, box_warp, axes, valid, max_distance, align_corners):
        B, C = features.shape[0], features.shape[2]
        return features.new_empty((B, 3, C, height, width)), points.new_empty((B, 3, height, width), dtype=torch.long)

    @torch.library.register_fake("oneshot::rasterize_points_backward")
    def _fake_backward(grad_planes, index, num_points):
        B, _, C = grad_planes.shape[:3]
        return grad_planes.new_empty((B, num_points, C))

    register_autograd("rasterize_points", "rasterize_points_backward")
    register_geometry_autocast("rasterize_points", (0,))


@once
def _register_triton() -> None:
    """``oneshot::rasterize_points_triton`` and its backward (Triton kernels of :mod:`oneshot.kernels.raster`)."""
    from ..kernels import raster as kernels

    @torch.library.triton_op("oneshot::rasterize_points_triton", mutates_args=())
    def rasterize_points_triton(points: Tensor, features: Tensor, height: int, width: int, box_warp: float,
                                axes: list[int], valid: Optional[Tensor], max_distance: Optional[float],
                                align_corners: bool) -> tuple[Tensor, Tensor]:
        return kernels.rasterize_forward(points.contiguous(), features.contiguous(), height, width, box_warp, axes,
                                         None if valid is None else valid.contiguous(), max_distance,
                                         align_corners)

    @torch.library.triton_op("oneshot::rasterize_points_backward_triton", mutates_args=())
    def rasterize_points_backward_triton(grad_planes: Tensor, index: Tensor, num_points: int) -> Tensor:
        return kernels.rasterize_backward(grad_planes.contiguous(), index.contiguous(), num_points)

    register_autograd("rasterize_points_triton", "rasterize_points_backward_triton")
    register_geometry_autocast("rasterize_points_triton", (0,))


if _extension.status().loaded:
    _register()
