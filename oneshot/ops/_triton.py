"""backend="triton": the Triton kernels of oneshot.kernels as torch.library ops with autograd.

``oneshot::<op>_triton`` and ``oneshot::<op>_backward_triton`` are ``torch.library.triton_op``s (torch.compile
traces into their kernels through ``wrap_triton``), registered on first use so that ``import oneshot`` never
imports triton. The Triton backend runs on CUDA tensors; CPU tensors only under ``TRITON_INTERPRET=1`` (Triton's
interpreter, for tests). dtypes: float32, and float16 / bfloat16 values (planes, colors, features) with float32
geometry; no float64.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Optional

import torch
from torch import Tensor

TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_REGISTERED = False


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def unavailable_reason(device: torch.device) -> str | None:
    """Why backend="triton" cannot run on `device` (None when it can)."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install triton)"
    if device.type == "cuda":
        return None
    if device.type == "cpu" and _interpreting():
        return None
    return (f"the Triton backend needs CUDA tensors, got {device.type} tensors (CPU tensors run only in Triton's "
            "interpreter, with TRITON_INTERPRET=1 set before the first use, for tests)")


def available(device: torch.device) -> bool:
    return unavailable_reason(device) is None


def ensure_registered() -> None:
    """Define the Triton ops (once)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from oneshot.kernels import raster as kraster
    from oneshot.kernels import raymarch as kray
    from oneshot.kernels import triplane as ktri

    from . import raster, raymarch, triplane
    from ._common import register_geometry_autocast

    # ---- triplane_sample
    @torch.library.triton_op("oneshot::triplane_sample_triton", mutates_args=())
    def triplane_sample_triton(planes: Tensor, points: Tensor, box_warp: float, axes: list[int],
                               reduce: str) -> Tensor:
        planes_cl = planes.permute(0, 1, 3, 4, 2).contiguous()  # no copy when already channels-last
        return ktri.triplane_forward(planes_cl, points.contiguous(), box_warp, axes, reduce)

    @torch.library.triton_op("oneshot::triplane_sample_backward_triton", mutates_args=())
    def triplane_sample_backward_triton(grad_out: Tensor, planes: Tensor, points: Tensor, box_warp: float,
                                        axes: list[int], reduce: str, planes_requires_grad: bool,
                                        points_requires_grad: bool) -> tuple[Tensor, Tensor]:
        planes_cl = planes.permute(0, 1, 3, 4, 2).contiguous()
        gp, gx = ktri.triplane_backward(grad_out.contiguous(), planes_cl, points.contiguous(), box_warp, axes,
                                        reduce, planes_requires_grad, points_requires_grad)
        if planes_requires_grad:
            gp = gp.to(planes.dtype).permute(0, 1, 4, 2, 3)  # [B, 3, C, H, W] view of the channels-last buffer
        return gp, gx

    triplane.register_autograd("triplane_sample_triton", "triplane_sample_backward_triton")

    # ---- ray_march
    @torch.library.triton_op("oneshot::ray_march_triton", mutates_args=())
    def ray_march_triton(colors: Tensor, densities: Tensor, depths: Tensor, density_bias: float,
                         white_background: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        lead, S, C = densities.shape[:-1], densities.shape[-1], colors.shape[-1]
        feat, depth, opacity, weights = kray.ray_march_forward(
            colors.reshape(-1, S, C).contiguous(), densities.reshape(-1, S).contiguous(),
            depths.reshape(-1, S).contiguous(), density_bias, white_background)
        return (feat.reshape(*lead, C), depth.reshape(lead), opacity.reshape(lead),
                weights.reshape(*lead, S - 1))

    @torch.library.triton_op("oneshot::ray_march_backward_triton", mutates_args=())
    def ray_march_backward_triton(grad_features: Optional[Tensor], grad_depth: Optional[Tensor],
                                  grad_opacity: Optional[Tensor], grad_weights: Optional[Tensor], colors: Tensor,
                                  densities: Tensor, depths: Tensor, density_bias: float,
                                  white_background: bool) -> tuple[Tensor, Tensor]:
        S, C = densities.shape[-1], colors.shape[-1]
        flat = lambda g, *tail: None if g is None else g.reshape(-1, *tail).contiguous()  # noqa: E731
        gc, gs = kray.ray_march_backward(
            flat(grad_features, C), flat(grad_depth), flat(grad_opacity), flat(grad_weights, S - 1),
            colors.reshape(-1, S, C).contiguous(), densities.reshape(-1, S).contiguous(),
            depths.reshape(-1, S).contiguous(), density_bias, white_background)
        return gc.reshape(colors.shape), gs.reshape(densities.shape)

    raymarch.register_autograd("ray_march_triton", "ray_march_backward_triton")

    # ---- rasterize_points
    @torch.library.triton_op("oneshot::rasterize_points_triton", mutates_args=())
    def rasterize_points_triton(points: Tensor, features: Tensor, height: int, width: int, box_warp: float,
                                axes: list[int], valid: Optional[Tensor], max_distance: Optional[float],
                                align_corners: bool) -> tuple[Tensor, Tensor]:
        return kraster.rasterize_forward(points.contiguous(), features.contiguous(), height, width, box_warp, axes,
                                         None if valid is None else valid.contiguous(), max_distance,
                                         align_corners)

    @torch.library.triton_op("oneshot::rasterize_points_backward_triton", mutates_args=())
    def rasterize_points_backward_triton(grad_planes: Tensor, index: Tensor, num_points: int) -> Tensor:
        return kraster.rasterize_backward(grad_planes.contiguous(), index.contiguous(), num_points)

    raster.register_autograd("rasterize_points_triton", "rasterize_points_backward_triton")

    # ---- render_triplane
    from oneshot.kernels import render as krender

    from . import render

    @torch.library.triton_op("oneshot::render_triplane_triton", mutates_args=())
    def render_triplane_triton(planes: Tensor, origins: Tensor, directions: Tensor, depths: Tensor, w1: Tensor,
                               b1: Tensor, w2: Tensor, b2: Tensor, box_warp: float, axes: list[int],
                               clip_to_box: bool, density_bias: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        planes_cl = planes.permute(0, 1, 3, 4, 2).contiguous()  # no copy when already channels-last
        return krender.render_forward(planes_cl, origins.contiguous(), directions.contiguous(), depths.contiguous(),
                                      w1.contiguous(), b1.contiguous(), w2.contiguous(), b2.contiguous(), box_warp,
                                      axes, clip_to_box, density_bias)

    @torch.library.triton_op("oneshot::render_triplane_backward_triton", mutates_args=())
    def render_triplane_backward_triton(grad_features: Optional[Tensor], grad_depth: Optional[Tensor],
                                        grad_opacity: Optional[Tensor], grad_weights: Optional[Tensor],
                                        planes: Tensor, origins: Tensor, directions: Tensor, depths: Tensor,
                                        w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, box_warp: float,
                                        axes: list[int], clip_to_box: bool,
                                        density_bias: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        c = lambda g: None if g is None else g.contiguous()  # noqa: E731
        planes_cl = planes.permute(0, 1, 3, 4, 2).contiguous()
        gp, gw1, gb1, gw2, gb2 = krender.render_backward(
            c(grad_features), c(grad_depth), c(grad_opacity), c(grad_weights), planes_cl, origins.contiguous(),
            directions.contiguous(), depths.contiguous(), w1.contiguous(), b1.contiguous(), w2.contiguous(),
            b2.contiguous(), box_warp, axes, clip_to_box, density_bias)
        return gp.to(planes.dtype).permute(0, 1, 4, 2, 3), gw1, gb1, gw2, gb2  # a [B, 3, C, H, W] view

    render.register_autograd("render_triplane_triton", "render_triplane_backward_triton")
    for op, positions in (("triplane_sample_triton", (1,)), ("ray_march_triton", (1, 2)),
                          ("rasterize_points_triton", (0,))):
        register_geometry_autocast(op, positions)
    _REGISTERED = True
