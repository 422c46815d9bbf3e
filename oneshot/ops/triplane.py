"""triplane_sample: bilinear sampling of three feature planes at 3D points."""

from __future__ import annotations

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
    check_tensor,
    shape_of,
)
from ._registry import once, register_geometry_autocast

__all__ = ["triplane_sample", "channels_last"]

_REDUCE = ("mean", "sum", "none")


def triplane_sample(
    planes: Tensor,  # [B, 3, C, H, W]
    points: Tensor,  # [B, M, 3]
    *,
    box_warp: float = 1.0,
    axes=PLANE_AXES_GOHA,
    reduce: str = "mean",
    backend: str | None = None,
) -> Tensor:
    """Sample three axis-aligned feature planes at 3D points (EG3D's tri-plane lookup).

    With c = points * 2 / box_warp, plane p reads ``(c[..., axes[p][0]], c[..., axes[p][1]])`` as the (x, y) of
    ``grid_sample(mode="bilinear", padding_mode="zeros", align_corners=False)`` on ``planes[:, p]``
    (x indexes W, y indexes H). Points with non-finite coordinates are unspecified (the native kernels give 0,
    grid_sample gives NaN).

    Args:
        planes: [B, 3, C, H, W] features of the three planes.
        points: [B, M, 3] points in world units; the box is [-box_warp/2, box_warp/2]^3.
        box_warp: side of the box the planes span.
        axes (tuple[tuple[int, int], ...]): the coordinate pair each plane reads; ``PLANE_AXES_GOHA`` (xy, xz, zy)
            or ``PLANE_AXES_EG3D``.
        reduce: "mean" or "sum" over the planes -> [B, M, C]; "none" -> [B, 3, M, C].
        backend: None/"auto" (fastest available), "reference", "native" or "triton".

    Returns:
        [B, M, C] or [B, 3, M, C] in the dtype of planes. Differentiable w.r.t. planes and points.

    dtypes: planes and points share a dtype, or planes are float16 / bfloat16 with float32 points (the
    lookup then runs in float32). Under ``torch.autocast``, 16-bit points are cast to float32.
    """
    check_tensor("planes", planes, "[B, 3, C, H, W]", 5)
    if planes.shape[1] != 3:
        raise ValueError(f"planes must be [B, 3, C, H, W], got {shape_of(planes)}")
    check_tensor("points", points, "[B, M, 3]", 3)
    if points.shape[2] != 3:
        raise ValueError(f"points must be [B, M, 3], got {shape_of(points)}")
    check_batch("points", points, "planes", planes)
    (points,) = autocast_geometry(planes.device.type, points)
    check_dtypes("planes", planes, ("points",), (points,))
    if reduce not in _REDUCE:
        raise ValueError(f"reduce must be one of {_REDUCE}, got {reduce!r}")
    box_warp = check_box_warp(box_warp)
    flat_axes = check_axes(axes)
    impl = resolve_backend(backend, "triplane_sample", planes.device, planes.dtype, points.dtype)
    if impl == "reference":
        return reference.triplane_sample(planes, points, box_warp, axes_pairs(flat_axes), reduce)
    if impl == "triton":
        _register_triton()
        return torch.ops.oneshot.triplane_sample_triton(channels_last(planes), points, box_warp, flat_axes, reduce)
    return torch.ops.oneshot.triplane_sample(channels_last(planes), points, box_warp, flat_axes, reduce)


def channels_last(planes: Tensor) -> Tensor:  # [B, 3, C, H, W] -> the same, channels contiguous
    """planes [B, 3, C, H, W] as a view whose channels are contiguous (a copy only when they are not).

    The kernels read one tap's C channels at a time, so they want this layout. Converting here, outside the op,
    means the autograd graph saves the converted tensor: the backward reuses it instead of converting again,
    and the planes' gradient (also channels-last) flows back through the view without a copy. A renderer that
    calls the ops several times on the same planes converts them once, with this function.
    """
    if planes.stride(2) == 1 or planes.shape[2] <= 1:
        return planes
    return planes.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)


def register_autograd(op: str, backward_op: str) -> None:
    """Autograd of ``oneshot::<op>`` through ``oneshot::<backward_op>`` (the native and the Triton pair)."""

    def setup_context(ctx, inputs, output):
        planes, points, box_warp, axes, reduce = inputs
        ctx.save_for_backward(planes, points)
        ctx.args = (box_warp, axes, reduce)
        ctx.set_materialize_grads(False)

    def backward(ctx, grad):
        if grad is None:
            return None, None, None, None, None
        planes, points = ctx.saved_tensors
        need_planes, need_points = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        gp, gx = getattr(torch.ops.oneshot, backward_op)(grad, planes, points, *ctx.args, need_planes, need_points)
        return (gp if need_planes else None), (gx if need_points else None), None, None, None

    torch.library.register_autograd(f"oneshot::{op}", backward, setup_context=setup_context)


def _register() -> None:
    @torch.library.register_fake("oneshot::triplane_sample")
    def _fake(planes, points, box_warp, axes, reduce):
        B, _, C = planes.shape[:3]
        M = points.shape[1]
        return planes.new_empty((B, 3, M, C) if reduce == "none" else (B, M, C))

    @torch.library.register_fake("oneshot::triplane_sample_backward")
    def _fake_backward(grad_out, planes, points, box_warp, axes, reduce, planes_requires_grad, points_requires_grad):
        B, _, C, H, W = planes.shape
        # The kernels return the planes' gradient channels-last: a [B, 3, C, H, W] view of [B, 3, H, W, C].
        gp = planes.new_empty((B, 3, H, W, C)).permute(0, 1, 4, 2, 3) if planes_requires_grad else planes.new_empty((0,))
        gx = points.new_empty(points.shape) if points_requires_grad else points.new_empty((0,))
        return gp, gx

    register_autograd("triplane_sample", "triplane_sample_backward")
    register_geometry_autocast("triplane_sample", (1,))


@once
def _register_triton() -> None:
    """``oneshot::triplane_sample_triton`` and its backward (Triton kernels of :mod:`oneshot.kernels.triplane`)."""
    from ..kernels import triplane as kernels

    @torch.library.triton_op("oneshot::triplane_sample_triton", mutates_args=())
    def triplane_sample_triton(planes: Tensor, points: Tensor, box_warp: float, axes: list[int],
                               reduce: str) -> Tensor:
        planes_cl = planes.permute(0, 1, 3, 4, 2).contiguous()  # no copy when already channels-last
        return kernels.triplane_forward(planes_cl, points.contiguous(), box_warp, axes, reduce)

    @torch.library.triton_op("oneshot::triplane_sample_backward_triton", mutates_args=())
    def triplane_sample_backward_triton(grad_out: Tensor, planes: Tensor, points: Tensor, box_warp: float,
                                        axes: list[int], reduce: str, planes_requires_grad: bool,
                                        points_requires_grad: bool) -> tuple[Tensor, Tensor]:
        planes_cl = planes.permute(0, 1, 3, 4, 2).contiguous()
        gp, gx = kernels.triplane_backward(grad_out.contiguous(), planes_cl, points.contiguous(), box_warp, axes,
                                           reduce, planes_requires_grad, points_requires_grad)
        if planes_requires_grad:
            gp = gp.to(planes.dtype).permute(0, 1, 4, 2, 3)  # [B, 3, C, H, W] view of the channels-last buffer
        return gp, gx

    register_autograd("triplane_sample_triton", "triplane_sample_backward_triton")
    register_geometry_autocast("triplane_sample_triton", (1,))


if _extension.status().loaded:
    _register()
