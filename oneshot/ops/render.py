"""render_triplane: tri-plane sampling, EG3D's decoder MLP and volume compositing fused into one op whose backward
recomputes the per-sample values instead of keeping them.

What it computes equals ``triplane_sample`` -> ``TriplaneDecoder`` -> ``ray_march`` (see
:func:`reference_render_triplane`, the composed reference), but autograd keeps only the inputs: the composed path
keeps the [R, S, C] features, the [R, S, hidden] activations and the [R, S, 1 + C] outputs of every sample.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _extension
from . import reference
from ._common import (
    PLANE_AXES_GOHA,
    axes_pairs,
    check_axes,
    check_box_warp,
    check_tensor,
    resolve_backend,
    shape_of,
)

__all__ = ["render_triplane", "RenderTriplaneResult", "reference_render_triplane", "decoder_weights"]

OUTSIDE_DENSITY = -1e4


class RenderTriplaneResult(NamedTuple):
    features: Tensor  # [B, R, Co] composited colours/features (ray_march's, before the renderer's x2-1)
    depth: Tensor  # [B, R] expected depth
    opacity: Tensor  # [B, R]
    weights: Tensor  # [B, R, S-1] compositing weights (the importance sampler's input)


def decoder_weights(decoder) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(w1 [hidden, C], b1 [hidden], w2 [1 + Co, hidden], b2 [1 + Co]) of a
    :class:`~oneshot.models.TriplaneDecoder` with its equalized-lr gains applied (differentiable w.r.t. its
    parameters)."""
    l1, l2 = decoder.net[0], decoder.net[2]
    return (l1.weight * l1.weight_gain, l1.bias * l1.bias_gain, l2.weight * l2.weight_gain, l2.bias * l2.bias_gain)


def reference_render_triplane(planes, origins, directions, depths, w1, b1, w2, b2, box_warp=1.0,
                              axes=PLANE_AXES_GOHA, clip_to_box=False, density_bias=-1.0):
    """The composed reference: ``reference.triplane_sample`` -> linear / softplus / linear / sigmoid ->
    ``reference.ray_march`` (pure PyTorch; autograd keeps every intermediate)."""
    B, R, S = depths.shape
    pts = (origins[:, :, None] + depths[..., None] * directions[:, :, None]).reshape(B, R * S, 3)
    if planes.dtype != pts.dtype:  # 16-bit planes: sampled in float32
        planes = planes.to(pts.dtype)
    feats = reference.triplane_sample(planes, pts, box_warp, axes_pairs(check_axes(axes)), "mean")
    y = F.linear(F.softplus(F.linear(feats, w1, b1)), w2, b2)
    sigma = y[..., 0]
    color = torch.sigmoid(y[..., 1:]) * (1 + 2 * 0.001) - 0.001
    if clip_to_box:
        inside = pts.abs().amax(-1) <= box_warp / 2
        sigma = torch.where(inside, sigma, sigma.new_tensor(OUTSIDE_DENSITY))
    return RenderTriplaneResult(*reference.ray_march(color.reshape(B, R, S, -1), sigma.reshape(B, R, S), depths,
                                                     float(density_bias), False))


def render_triplane(
    planes: Tensor,  # [B, 3, C, H, W]
    origins: Tensor,  # [B, R, 3]
    directions: Tensor,  # [B, R, 3]
    depths: Tensor,  # [B, R, S]
    w1: Tensor,  # [hidden, C]
    b1: Tensor,  # [hidden]
    w2: Tensor,  # [1 + Co, hidden]
    b2: Tensor,  # [1 + Co]
    *,
    box_warp: float = 1.0,
    axes=PLANE_AXES_GOHA,
    clip_to_box: bool = False,
    density_bias: float = -1.0,
    backend: str | None = None,
) -> RenderTriplaneResult:
    """Render rays through tri-planes with EG3D's decoder, fused (sample + MLP + composite per ray).

    Per sample k of a ray: p = o + t_k d; f = triplane_sample(planes, p, box_warp, axes, "mean");
    y = w2 softplus(w1 f + b1) + b2; sigma = y_0 (-1e4 outside the box with `clip_to_box`); colour =
    sigmoid(y_1..) * 1.002 - 0.001; then ray_march(colour, sigma, t, density_bias).

    Args:
        planes: [B, 3, C, H, W] tri-planes.
        origins: [B, R, 3] ray origins (world units; constants: no gradient flows to them).
        directions: [B, R, 3] ray directions (constants).
        depths: [B, R, S] sample depths, non-decreasing along each ray, S >= 2 (constants).
        w1: [hidden, C] the decoder's first layer's effective weight (:func:`decoder_weights` of a
            ``TriplaneDecoder`` gives all four).
        b1: [hidden] its bias.
        w2: [1 + Co, hidden] the second layer's effective weight (row 0: density, then the Co features).
        b2: [1 + Co] its bias.
        box_warp: side of the box the planes span, as in ``triplane_sample``.
        axes (tuple[tuple[int, int], ...]): the coordinate pair of each plane, as in ``triplane_sample``.
        clip_to_box: density -1e4 outside the box (the renderer's setting).
        density_bias: added to the density before the softplus (EG3D: -1).
        backend: None/"auto" (native when built), "reference", "native" or "triton".

    Returns:
        RenderTriplaneResult(features [B, R, Co], depth [B, R], opacity [B, R], weights [B, R, S-1]),
        differentiable w.r.t. planes, w1, b1, w2 and b2. The backward recomputes every sample: nothing of
        size [R, S, *] is kept between forward and backward.

    dtypes: float32 or float64, all tensors alike; or float16 / bfloat16 planes with float32 for the rest
    (sampled and accumulated in float32; the planes' gradient in their dtype).
    """
    check_tensor("planes", planes, "[B, 3, C, H, W]", 5)
    if planes.shape[1] != 3:
        raise ValueError(f"planes must be [B, 3, C, H, W], got {shape_of(planes)}")
    B, _, C = planes.shape[:3]
    for name, t in (("origins", origins), ("directions", directions)):
        check_tensor(name, t, "[B, R, 3]", 3)
        if t.shape[0] != B or t.shape[2] != 3:
            raise ValueError(f"{name} must be [B, R, 3] with B = {B} (the planes' batch), got {shape_of(t)}")
    if directions.shape != origins.shape:
        raise ValueError(f"directions must have the shape of origins {shape_of(origins)}, got {shape_of(directions)}")
    check_tensor("depths", depths, "[B, R, S]", 3)
    if depths.shape[:2] != origins.shape[:2]:
        raise ValueError(f"depths must be [B, R, S] with B, R = {B}, {origins.shape[1]}, got {shape_of(depths)}")
    if depths.shape[2] < 2:
        raise ValueError(f"render_triplane needs S >= 2 samples per ray, got S = {depths.shape[2]}")
    check_tensor("w1", w1, "[hidden, C]", 2)
    if w1.shape[1] != C:
        raise ValueError(f"w1 must be [hidden, C] with C = {C} (the planes' channels), got {shape_of(w1)}")
    hidden = w1.shape[0]
    check_tensor("b1", b1, f"[{hidden}]", 1)
    if b1.shape[0] != hidden:
        raise ValueError(f"b1 must be [{hidden}], got {shape_of(b1)}")
    check_tensor("w2", w2, "[1 + out_channels, hidden]", 2)
    if w2.shape[1] != hidden or w2.shape[0] < 2:
        raise ValueError(f"w2 must be [1 + out_channels, hidden] with hidden = {hidden}, got {shape_of(w2)}")
    check_tensor("b2", b2, f"[{w2.shape[0]}]", 1)
    if b2.shape[0] != w2.shape[0]:
        raise ValueError(f"b2 must be [{w2.shape[0]}], got {shape_of(b2)}")
    low = planes.dtype in (torch.float16, torch.bfloat16)
    compute = torch.float32 if low else planes.dtype
    for name, t in (("origins", origins), ("directions", directions), ("depths", depths), ("w1", w1), ("b1", b1),
                    ("w2", w2), ("b2", b2)):
        if t.device != planes.device:
            raise ValueError(f"{name} must be on the device of planes ({planes.device}), got {t.device}")
        if t.dtype != compute:
            also = f" (float32 with {planes.dtype} planes)" if low else ""
            raise TypeError(f"{name} must have the dtype of planes ({planes.dtype}){also}, got {t.dtype}")
    box_warp = check_box_warp(box_warp)
    flat_axes = check_axes(axes)
    # The kernels compute in float32 / float64 (16-bit planes are read in float32): pick the backend by that.
    impl = resolve_backend(backend, "render_triplane", planes.device, compute)
    if impl == "triton":
        if compute != torch.float32:
            raise TypeError(f"backend='triton' supports float32 (and 16-bit planes) for render_triplane, got "
                            f"{planes.dtype}")
        from . import _triton

        _triton.ensure_registered()
        return RenderTriplaneResult(*torch.ops.oneshot.render_triplane_triton(
            planes, origins, directions, depths, w1, b1, w2, b2, box_warp, flat_axes, bool(clip_to_box),
            float(density_bias)))
    if impl == "reference":
        return reference_render_triplane(planes, origins, directions, depths, w1, b1, w2, b2, box_warp,
                                         axes_pairs(flat_axes), bool(clip_to_box), float(density_bias))
    return RenderTriplaneResult(*torch.ops.oneshot.render_triplane(
        planes, origins, directions, depths, w1, b1, w2, b2, box_warp, flat_axes, bool(clip_to_box),
        float(density_bias)))


def _register() -> None:
    @torch.library.register_fake("oneshot::render_triplane")
    def _fake(planes, origins, directions, depths, w1, b1, w2, b2, box_warp, axes, clip_to_box, density_bias):
        B, R, S = depths.shape
        Co = w2.shape[0] - 1
        return (planes.new_empty((B, R, Co)), planes.new_empty((B, R)), planes.new_empty((B, R)),
                planes.new_empty((B, R, S - 1)))

    @torch.library.register_fake("oneshot::render_triplane_backward")
    def _fake_backward(gf, gd, go, gw, planes, origins, directions, depths, w1, b1, w2, b2, box_warp, axes,
                       clip_to_box, density_bias):
        return (planes.new_empty(planes.shape), w1.new_empty(w1.shape), b1.new_empty(b1.shape),
                w2.new_empty(w2.shape), b2.new_empty(b2.shape))

    register_autograd("render_triplane", "render_triplane_backward")


def register_autograd(op: str, backward_op: str) -> None:
    """Autograd of ``oneshot::<op>`` through ``oneshot::<backward_op>`` (the native and the Triton pair)."""

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:8])
        ctx.args = inputs[8:]
        ctx.set_materialize_grads(False)

    def backward(ctx, gf, gd, go, gw):
        if gf is None and gd is None and go is None and gw is None:
            return (None,) * 12
        gp, gw1, gb1, gw2, gb2 = getattr(torch.ops.oneshot, backward_op)(gf, gd, go, gw, *ctx.saved_tensors,
                                                                         *ctx.args)
        return gp, None, None, None, gw1, gb1, gw2, gb2, None, None, None, None

    torch.library.register_autograd(f"oneshot::{op}", backward, setup_context=setup_context)


if _extension.status().loaded and hasattr(torch.ops.oneshot, "render_triplane"):
    _register()
