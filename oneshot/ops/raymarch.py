"""ray_march: EG3D's volume-rendering ray marcher (MipRayMarcher2) as one fused op with a depth output."""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from .. import _extension
from . import reference
from ._backend import resolve_backend
from ._common import autocast_geometry, check_dtypes, check_tensor, shape_of
from ._registry import once, register_geometry_autocast

__all__ = ["ray_march", "RayMarchResult"]


class RayMarchResult(NamedTuple):
    features: Tensor  # [..., C] composited features (+ 1 - opacity with a white background)
    depth: Tensor  # [...] expected depth, clamped per ray to [t_0, t_{S-1}]; t_{S-1} where opacity == 0
    opacity: Tensor  # [...] sum of the weights
    weights: Tensor  # [..., S-1] per-interval compositing weights


def ray_march(
    colors: Tensor,  # [..., S, C]
    densities: Tensor,  # [..., S]
    depths: Tensor,  # [..., S]
    *,
    density_bias: float = -1.0,
    white_background: bool = False,
    backend: str | None = None,
) -> RayMarchResult:
    """Composite samples along rays with EG3D's midpoint rule.

    Over the S-1 intervals: delta_i = t_{i+1} - t_i; cbar_i, tbar_i the interval midpoints of colors and
    depths; sigma_i = softplus((s_i + s_{i+1}) / 2 + density_bias); alpha_i = 1 - exp(-sigma_i delta_i);
    T_0 = 1, T_{i+1} = T_i (1 - alpha_i + 1e-10); w_i = alpha_i T_i. opacity = sum w_i;
    features = sum w_i cbar_i (+ 1 - opacity if white_background); depth = sum w_i tbar_i / opacity, clamped
    per ray to [t_0, t_{S-1}] (t_{S-1} where opacity == 0). No x2-1 rescaling (the renderer does that).

    Args:
        colors: [..., S, C] per-sample features.
        densities: [..., S] raw densities (before the softplus).
        depths: [..., S] sample depths, non-decreasing along each ray (not checked; repeats give delta = 0).
        density_bias: added to the mid-interval density before the softplus (EG3D: -1).
        white_background: add (1 - opacity) to every feature channel.
        backend: None/"auto", "reference", "native" or "triton".

    Returns:
        RayMarchResult(features [..., C], depth [...], opacity [...], weights [..., S-1]), differentiable
        w.r.t. colors and densities (depths are constants).

    dtypes: all three in one dtype, or float16 / bfloat16 colors with float32 densities and depths
    (accumulation in float32; features in the colors' dtype, depth, opacity and weights in float32). Under
    ``torch.autocast``, 16-bit densities and depths are cast to float32.
    """
    check_tensor("colors", colors, "[..., S, C]")
    if colors.dim() < 2:
        raise ValueError(f"colors must be [..., S, C], got {shape_of(colors)}")
    check_tensor("densities", densities, "[..., S]")
    if tuple(densities.shape) != tuple(colors.shape[:-1]):
        raise ValueError(f"densities must be [..., S] = {shape_of(colors)[:-1]} (colors without C), got {shape_of(densities)}")
    check_tensor("depths", depths, "[..., S]")
    if depths.shape != densities.shape:
        raise ValueError(f"depths must have the shape of densities {shape_of(densities)}, got {shape_of(depths)}")
    if densities.shape[-1] < 2:
        raise ValueError(f"ray_march needs S >= 2 samples per ray, got S = {densities.shape[-1]}")
    densities, depths = autocast_geometry(colors.device.type, densities, depths)
    check_dtypes("colors", colors, ("densities", "depths"), (densities, depths))
    density_bias = float(density_bias)
    white_background = bool(white_background)
    impl = resolve_backend(backend, "ray_march", colors.device, colors.dtype, densities.dtype)
    if impl == "reference":
        return RayMarchResult(*reference.ray_march(colors, densities, depths, density_bias, white_background))
    if impl == "triton":
        _register_triton()
    op = torch.ops.oneshot.ray_march_triton if impl == "triton" else torch.ops.oneshot.ray_march
    return RayMarchResult(*op(colors, densities, depths, density_bias, white_background))


def register_autograd(op: str, backward_op: str) -> None:
    """Autograd of ``oneshot::<op>`` through ``oneshot::<backward_op>`` (the native and the Triton pair)."""

    def setup_context(ctx, inputs, output):
        colors, densities, depths, density_bias, white_background = inputs
        ctx.save_for_backward(colors, densities, depths)
        ctx.args = (density_bias, white_background)
        ctx.set_materialize_grads(False)  # unused outputs arrive as None: no zero tensors to build and read

    def backward(ctx, g_features, g_depth, g_opacity, g_weights):
        if g_features is None and g_depth is None and g_opacity is None and g_weights is None:
            return None, None, None, None, None
        colors, densities, depths = ctx.saved_tensors
        gc, gs = getattr(torch.ops.oneshot, backward_op)(
            g_features, g_depth, g_opacity, g_weights, colors, densities, depths, *ctx.args
        )
        return gc, gs, None, None, None

    torch.library.register_autograd(f"oneshot::{op}", backward, setup_context=setup_context)


def _register() -> None:
    @torch.library.register_fake("oneshot::ray_march")
    def _fake(colors, densities, depths, density_bias, white_background):
        lead, S, C = densities.shape[:-1], densities.shape[-1], colors.shape[-1]
        return (colors.new_empty((*lead, C)), densities.new_empty(lead), densities.new_empty(lead),
                densities.new_empty((*lead, S - 1)))

    @torch.library.register_fake("oneshot::ray_march_backward")
    def _fake_backward(gf, gd, go, gw, colors, densities, depths, density_bias, white_background):
        return colors.new_empty(colors.shape), densities.new_empty(densities.shape)

    register_autograd("ray_march", "ray_march_backward")
    register_geometry_autocast("ray_march", (1, 2))


@once
def _register_triton() -> None:
    """``oneshot::ray_march_triton`` and its backward (Triton kernels of :mod:`oneshot.kernels.raymarch`)."""
    from ..kernels import raymarch as kernels

    @torch.library.triton_op("oneshot::ray_march_triton", mutates_args=())
    def ray_march_triton(colors: Tensor, densities: Tensor, depths: Tensor, density_bias: float,
                         white_background: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        lead, S, C = densities.shape[:-1], densities.shape[-1], colors.shape[-1]
        feat, depth, opacity, weights = kernels.ray_march_forward(
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
        gc, gs = kernels.ray_march_backward(
            flat(grad_features, C), flat(grad_depth), flat(grad_opacity), flat(grad_weights, S - 1),
            colors.reshape(-1, S, C).contiguous(), densities.reshape(-1, S).contiguous(),
            depths.reshape(-1, S).contiguous(), density_bias, white_background)
        return gc.reshape(colors.shape), gs.reshape(densities.shape)

    register_autograd("ray_march_triton", "ray_march_backward_triton")
    register_geometry_autocast("ray_march_triton", (1, 2))


if _extension.status().loaded:
    _register()
