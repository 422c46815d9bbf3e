"""render_triplane: tri-plane sampling, EG3D's decoder MLP and volume compositing fused into one op whose backward
recomputes the per-sample values instead of keeping them.

What it computes equals ``triplane_sample`` -> ``TriplaneDecoder`` -> ``ray_march`` (see
:func:`reference_render_triplane`, the composed reference), but autograd keeps only the inputs: the composed path
keeps the [R, S, C] features, the [R, S, hidden] activations and the [R, S, 1 + C] outputs of every sample.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Protocol, runtime_checkable

import torch
from torch import Tensor

from .. import _extension
from . import reference
from ._backend import op_exists, resolve_backend
from ._common import PLANE_AXES_GOHA, axes_pairs, check_axes, check_box_warp, check_tensor, shape_of
from ._registry import once

__all__ = ["render_triplane", "RenderTriplaneResult", "reference_render_triplane", "decoder_weights",
           "FusableDecoder"]


class RenderTriplaneResult(NamedTuple):
    features: Tensor  # [B, R, Co] composited colours/features (ray_march's, before the renderer's x2-1)
    depth: Tensor  # [B, R] expected depth
    opacity: Tensor  # [B, R]
    weights: Tensor  # [B, R, S-1] compositing weights (the importance sampler's input)


@runtime_checkable
class FusableDecoder(Protocol):
    """A decoder that ``render_triplane`` can fuse: EG3D's MLP, ``features [..., C] -> y = w2 softplus(w1 f + b1) +
    b2``, sigma = y_0 (raw), colour = sigmoid(y_1..) * 1.002 - 0.001, exposed through :meth:`effective_weights`.
    :class:`oneshot.models.TriplaneDecoder` is one; any module with this method and this forward is another."""

    def effective_weights(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(w1 [hidden, C], b1 [hidden], w2 [1 + Co, hidden], b2 [1 + Co]): the weights the forward applies (any
        run-time scaling, such as equalized-lr gains, already applied), differentiable w.r.t. the parameters."""
        ...


def decoder_weights(decoder: FusableDecoder) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(w1 [hidden, C], b1 [hidden], w2 [1 + Co, hidden], b2 [1 + Co]) of a decoder for :func:`render_triplane`:
    ``decoder.effective_weights()`` (the :class:`FusableDecoder` protocol; a
    :class:`~oneshot.models.TriplaneDecoder` gives its weights with the equalized-lr gains applied), checked to be
    four tensors of one MLP (ranks and matching sizes). Differentiable w.r.t. the decoder's parameters."""
    get = getattr(decoder, "effective_weights", None)
    if not callable(get):
        raise TypeError(f"decoder must have effective_weights() -> (w1, b1, w2, b2) (oneshot.ops.FusableDecoder, "
                        f"e.g. oneshot.models.TriplaneDecoder), got {type(decoder).__name__}")
    weights = get()
    if not isinstance(weights, (tuple, list)) or len(weights) != 4 or not all(isinstance(w, Tensor) for w in weights):
        raise TypeError(f"{type(decoder).__name__}.effective_weights() must return four tensors (w1, b1, w2, b2), "
                        f"got {type(weights).__name__}")
    w1, b1, w2, b2 = weights
    if (w1.dim() != 2 or b1.shape != w1.shape[:1] or w2.dim() != 2 or w2.shape[1] != w1.shape[0]
            or b2.shape != w2.shape[:1]):
        raise ValueError(f"{type(decoder).__name__}.effective_weights() must return w1 [hidden, C], b1 [hidden], "
                         f"w2 [1 + Co, hidden], b2 [1 + Co], got {[shape_of(w) for w in weights]}")
    return w1, b1, w2, b2


def reference_render_triplane(planes, origins, directions, depths, w1, b1, w2, b2, box_warp=1.0,
                              axes=PLANE_AXES_GOHA, clip_to_box=False, density_bias=-1.0) -> RenderTriplaneResult:
    """:func:`oneshot.ops.reference.render_triplane` (the composed pure-PyTorch reference, autograd keeping every
    intermediate) with its result named; `axes` may be any form :func:`render_triplane` takes."""
    return RenderTriplaneResult(*reference.render_triplane(planes, origins, directions, depths, w1, b1, w2, b2,
                                                           box_warp, axes_pairs(check_axes(axes)), clip_to_box,
                                                           density_bias))


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
            :class:`FusableDecoder` such as ``TriplaneDecoder`` gives all four).
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
    (sampled and accumulated in float32; the planes' gradient in their dtype). On CUDA the decoder's GEMMs run on
    tensor cores: bfloat16 operands with float32 accumulation for 16-bit planes (within ~16 x 2^-8 of each result's
    scale of the float32 contract), 3xTF32 for float32 planes (float32-accurate); see docs/cuda_render.md.
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
        _register_triton()
        return RenderTriplaneResult(*torch.ops.oneshot.render_triplane_triton(
            planes, origins, directions, depths, w1, b1, w2, b2, box_warp, flat_axes, bool(clip_to_box),
            float(density_bias)))
    if impl == "reference":
        return RenderTriplaneResult(*reference.render_triplane(planes, origins, directions, depths, w1, b1, w2, b2,
                                                               box_warp, axes_pairs(flat_axes), bool(clip_to_box),
                                                               float(density_bias)))
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


@once
def _register_triton() -> None:
    """``oneshot::render_triplane_triton`` and its backward (Triton kernels of :mod:`oneshot.kernels.render`)."""
    from ..kernels import render as kernels

    @torch.library.triton_op("oneshot::render_triplane_triton", mutates_args=())
    def render_triplane_triton(planes: Tensor, origins: Tensor, directions: Tensor, depths: Tensor, w1: Tensor,
                               b1: Tensor, w2: Tensor, b2: Tensor, box_warp: float, axes: list[int],
                               clip_to_box: bool, density_bias: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        planes_cl = planes.permute(0, 1, 3, 4, 2).contiguous()  # no copy when already channels-last
        return kernels.render_forward(planes_cl, origins.contiguous(), directions.contiguous(), depths.contiguous(),
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
        gp, gw1, gb1, gw2, gb2 = kernels.render_backward(
            c(grad_features), c(grad_depth), c(grad_opacity), c(grad_weights), planes_cl, origins.contiguous(),
            directions.contiguous(), depths.contiguous(), w1.contiguous(), b1.contiguous(), w2.contiguous(),
            b2.contiguous(), box_warp, axes, clip_to_box, density_bias)
        return gp.to(planes.dtype).permute(0, 1, 4, 2, 3), gw1, gb1, gw2, gb2  # a [B, 3, C, H, W] view

    register_autograd("render_triplane_triton", "render_triplane_backward_triton")


if _extension.status().loaded and op_exists("render_triplane"):  # (an extension older than this op lacks it)
    _register()
