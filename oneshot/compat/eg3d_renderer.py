"""EG3D's ``ImportanceRenderer`` and ``MipRayMarcher2`` on oneshot's ops.

The render is EG3D's: stratified coarse depths, a coarse pass, importance depths from its weights, the coarse and
fine samples merged in depth order, and the final composite; ``forward`` returns (rgb [B, N, C] in [-1, 1],
depth [B, N, 1], weights_sum [B, N, 1]) with EG3D's random draws (see :mod:`.eg3d_sampling`).

Two paths under it:

* **fused**: the decoder is EG3D-shaped (:func:`.eg3d_decoder.eg3d_decoder_reason`) and the planes axis-aligned:
  the coarse pass runs ``oneshot.ops.render_triplane`` without autograd (the importance sampler needs only its
  weights), the final pass runs it once more over all the samples, coarse ones included, with autograd. Nothing
  per sample is kept for the backward; the gradients reach the planes and the decoder's parameters as in EG3D
  (the coarse samples' contribution through the final pass, where EG3D also composites them).
* **composed**: any other decoder (or density noise, rays that need gradients, autocast, other plane matrices):
  ``triplane_sample`` -> the user's decoder -> ``ray_march``, in EG3D's order of calls.

Where ``ray_march`` differs from EG3D's ray marcher, the outputs are brought back to EG3D's values: EG3D clamps the
depth to the min / max over **all** depths of the batch (after NaN -> inf), so a ray with zero opacity gets the
batch's largest depth (``ray_march`` gives the ray's own far depth). White background and the x2-1 scaling are
applied here, in EG3D's order. (EG3D's zero-opacity rays get NaN depth gradients; here they get none.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..ops import FUSED_AUTO_DEVICES, has_native_kernel, ray_march, render_triplane, use_fused_render
from .eg3d_decoder import eg3d_decoder_reason, eg3d_decoder_weights
from .eg3d_planes import axes_of, plane_matrices, resolve_axes, sample_axis_aligned, sample_from_planes
from .eg3d_sampling import (RenderingOptionsError, importance_depths, importance_u, parse_options, sample_pdf,
                            stratified_depths)

__all__ = ["ImportanceRenderer", "MipRayMarcher2", "Settings", "DropInRenderer"]

OUTSIDE_DENSITY = -1e4  # the raw density of samples outside the box with clip_to_box (as render_triplane's)


class _EG3DWeights:
    """An EG3D-shaped decoder seen through oneshot's :class:`~oneshot.ops.FusableDecoder` protocol."""

    def __init__(self, decoder):
        self.decoder = decoder

    def effective_weights(self):
        return eg3d_decoder_weights(self.decoder, next(self.decoder.parameters()).dtype)


@dataclass(frozen=True)
class Settings:
    """The drop-in's switches (all off: EG3D's behaviour).

    plane_axes: None (the renderer's own ``plane_axes`` matrices: EG3D's, or GOHA's in GOHA's copy), "eg3d",
        "goha" (xy, xz, zy: GOHA's fix of EG3D's duplicated plane) or three (a, b) coordinate pairs.
    deterministic: evenly spaced coarse depths and importance u = linspace(0, 1, n) (EG3D's det=True): no random
        draws, the same image on every call.
    clip_to_box: samples outside [-box_warp/2, box_warp/2]^3 get no density (EG3D gives them the decoder's
        output for zero features).
    fused: oneshot's one ``fused`` setting (:func:`oneshot.ops.use_fused_render`): None (automatic) takes the fused
        op where it measured faster (the CPU; CUDA's kernel is not measured yet), True wherever this build has a
        render_triplane kernel for the device (a named error where it has none), False never. Whatever the setting,
        a call that needs the composed path (another decoder, density noise, rays with gradients, autocast, planes
        that are not three axis-aligned ones) takes it: :meth:`ImportanceRenderer.oneshot_path` says why.
    unknown_options: a rendering_options key nobody is known to read: "warn" (once), "error" or "ignore".
    """

    plane_axes: tuple | None = None
    deterministic: bool = False
    clip_to_box: bool = False
    fused: bool | None = None
    unknown_options: str = "warn"

    def __post_init__(self):
        if self.plane_axes is not None:
            object.__setattr__(self, "plane_axes", resolve_axes(self.plane_axes))
        for name in ("deterministic", "clip_to_box"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.fused is not None and not isinstance(self.fused, bool):
            raise ValueError(f"fused must be None (automatic), True or False, got {self.fused!r}")
        if self.unknown_options not in ("warn", "error", "ignore"):
            raise ValueError(f"unknown_options must be 'warn', 'error' or 'ignore', got {self.unknown_options!r}")


def _check_rays(planes, ray_origins, ray_directions):
    if not isinstance(planes, Tensor) or planes.dim() != 5:
        raise ValueError(f"planes must be [B, n_planes, C, H, W], got "
                         f"{list(planes.shape) if isinstance(planes, Tensor) else type(planes).__name__}")
    for name, t in (("ray_origins", ray_origins), ("ray_directions", ray_directions)):
        if not isinstance(t, Tensor) or t.dim() != 3 or t.shape[-1] != 3 or t.shape[0] != planes.shape[0]:
            raise ValueError(f"{name} must be [B, N, 3] with B = {planes.shape[0]} (the planes' batch), got "
                             f"{list(t.shape) if isinstance(t, Tensor) else type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
        if t.device != planes.device:
            raise ValueError(f"{name} must be on the planes' device ({planes.device}), got {t.device}")
    if ray_directions.shape != ray_origins.shape:
        raise ValueError(f"ray_directions must have the shape of ray_origins {list(ray_origins.shape)}, got "
                         f"{list(ray_directions.shape)}")


def eg3d_outputs(features: Tensor,  # [..., C] composited (ray_march's, before x2-1)
                 opacity: Tensor,  # [...]
                 depth: Tensor,  # [...] ray_march's (clamped per ray)
                 all_depths: Tensor,  # [..., S] every depth the composite used
                 white_back: bool) -> tuple[Tensor, Tensor]:  # rgb [..., C], depth [...]
    """EG3D's ray-marcher outputs from ray_march's: white background, x2-1, and the depth clamped to the min / max
    over all depths (a ray with zero opacity, whose depth EG3D computes as 0/0 -> NaN -> inf, gets the max)."""
    if white_back:
        features = features + 1 - opacity.unsqueeze(-1)
    rgb = features * 2 - 1
    if all_depths.numel():
        lo, hi = all_depths.min().to(depth.dtype), all_depths.max().to(depth.dtype)
        depth = torch.clamp(torch.where(opacity > 0, depth, hi), lo, hi)
    return rgb, depth


class MipRayMarcher2(nn.Module):
    """EG3D's ray marcher on ``oneshot.ops.ray_march``: forward(colors [B, N, S, C], densities [B, N, S, 1],
    depths [B, N, S, 1], rendering_options) -> (rgb [B, N, C] in [-1, 1], depth [B, N, 1], weights
    [B, N, S-1, 1]). Midpoint rule, sigma = softplus(mid - 1); the depth clamped to the min / max of all `depths`;
    ``rendering_options['white_back']`` adds 1 - opacity. Differentiable w.r.t. colors and densities."""

    def __init__(self):
        super().__init__()

    def run_forward(self, colors, densities, depths, rendering_options):
        clamp = rendering_options.get("clamp_mode") if hasattr(rendering_options, "get") else None
        if clamp != "softplus":
            raise RenderingOptionsError(f"rendering_options['clamp_mode'] must be 'softplus' (MipRayMarcher2's only "
                                        f"density activation), got {clamp!r}")
        for name, t, last in (("colors", colors, "C"), ("densities", densities, "1"), ("depths", depths, "1")):
            if not isinstance(t, Tensor) or t.dim() != 4 or (last == "1" and t.shape[-1] != 1):
                raise ValueError(f"{name} must be [B, N, S, {last}], got "
                                 f"{list(t.shape) if isinstance(t, Tensor) else type(t).__name__}")
        if densities.shape[:3] != colors.shape[:3] or depths.shape != densities.shape:
            raise ValueError(f"colors {list(colors.shape)}, densities {list(densities.shape)} and depths "
                             f"{list(depths.shape)} must share [B, N, S]")
        white_back = bool(rendering_options.get("white_back", False))
        geo = torch.float64 if torch.float64 in (colors.dtype, densities.dtype, depths.dtype) else torch.float32
        if colors.dtype not in (torch.float16, torch.bfloat16):
            colors = colors.to(geo)
        r = ray_march(colors, densities[..., 0].to(geo), depths[..., 0].to(geo), density_bias=-1.0)
        rgb, depth = eg3d_outputs(r.features, r.opacity, r.depth, depths, white_back)
        return rgb, depth.unsqueeze(-1), r.weights.unsqueeze(-1)

    def forward(self, colors, densities, depths, rendering_options):
        return self.run_forward(colors, densities, depths, rendering_options)


def _compute_dtype(planes: Tensor) -> torch.dtype:
    return torch.float64 if planes.dtype == torch.float64 else torch.float32


class DropInRenderer:
    """The drop-in's ``forward`` and ``run_model``, mixed into :class:`ImportanceRenderer` and into the renderer
    classes ``patch()`` swaps (a subclass of the original that keeps every other method and attribute)."""

    _oneshot_settings = Settings()

    # -- EG3D's entry points ----------------------------------------------------------------------------------

    def forward(self, planes, decoder, ray_origins, ray_directions, rendering_options):
        """Render rays through tri-planes (EG3D's ``ImportanceRenderer.forward``).

        Args:
            planes: [B, n_planes, C, H, W] features (n_planes = 3 with axis-aligned plane matrices for oneshot's
                kernels). decoder: EG3D's ``OSGDecoder`` (or any module called as
                decoder(features [B, n_planes, M, C], directions [B, M, 3]) -> {'rgb': [B, M, Co], 'sigma':
                [B, M, 1]}). ray_origins, ray_directions: [B, N, 3]. rendering_options: EG3D's rendering_kwargs.

        Returns:
            (rgb [B, N, Co] in [-1, 1] (+ white background), depth [B, N, 1], weights_sum [B, N, 1]).
        """
        s = self._oneshot_settings
        opts = parse_options(rendering_options, s.unknown_options)
        _check_rays(planes, ray_origins, ray_directions)
        self.plane_axes = self.plane_axes.to(ray_origins.device)
        depths = stratified_depths(ray_origins, opts.ray_start, opts.ray_end, opts.depth_resolution,
                                   opts.disparity_space_sampling, s.deterministic)
        if self.oneshot_path(planes, decoder, ray_origins, ray_directions, rendering_options)[0] == "fused":
            return self._oneshot_fused(planes, decoder, ray_origins, ray_directions, depths, opts)
        return self._oneshot_composed(planes, decoder, ray_origins, ray_directions, depths, opts, rendering_options)

    def run_model(self, planes, decoder, sample_coordinates, sample_directions, options):
        """EG3D's ``run_model``: the decoder's output dict at points [B, M, 3] (directions [B, M, 3]), with
        ``options['density_noise']`` noise added to 'sigma' (``randn_like``, as EG3D)."""
        box_warp = options["box_warp"]
        axes = self.oneshot_axes()
        if axes is not None and planes.dim() == 5 and planes.shape[1] == 3:
            if sample_coordinates.dim() != 3 or sample_coordinates.shape[0] != planes.shape[0]:
                raise ValueError(f"sample_coordinates must be [B, M, 3] with B = {planes.shape[0]}, got "
                                 f"{list(sample_coordinates.shape)}")
            feats = sample_axis_aligned(planes, sample_coordinates, axes, float(box_warp))
        else:
            feats = sample_from_planes(self.plane_axes.to(planes.device), planes, sample_coordinates,
                                       padding_mode="zeros", box_warp=box_warp)
        out = decoder(feats, sample_directions)
        noise = options.get("density_noise", 0)
        if noise > 0:
            out["sigma"] = out["sigma"] + torch.randn_like(out["sigma"]) * noise
        return out

    # -- which path, and why -----------------------------------------------------------------------------------

    def oneshot_axes(self):
        """The coordinate pairs the planes are read with (the plane_axes switch, else the renderer's own
        plane_axes matrices when axis-aligned), or None for other matrices."""
        s = self._oneshot_settings
        return s.plane_axes if s.plane_axes is not None else axes_of(self.plane_axes)

    def oneshot_path(self, planes, decoder, ray_origins, ray_directions, rendering_options) -> tuple[str, str]:
        """("fused" or "composed", why): the path ``forward`` takes for these arguments."""
        s = self._oneshot_settings
        if s.fused is False:
            return "composed", "fused=False"
        if self.oneshot_axes() is None or planes.shape[1] != 3:
            return "composed", "the plane matrices are not three axis-aligned planes"
        if rendering_options.get("density_noise", 0) > 0:
            return "composed", "density_noise > 0 (noise per sample)"
        if ray_origins.requires_grad or ray_directions.requires_grad:
            return "composed", "the rays need gradients (render_triplane treats rays as constants)"
        dev = planes.device.type
        if dev in ("cpu", "cuda") and torch.is_autocast_enabled(dev):
            return "composed", "autocast is on (the decoder would run in its autocast dtype)"
        if planes.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
            return "composed", f"planes are {planes.dtype}"
        why = eg3d_decoder_reason(decoder, planes.shape[2])
        if why is not None:
            return "composed", f"the decoder is not EG3D-shaped: {why}"
        # the build and the device: oneshot's one rule (fused=True raises a named error where no kernel exists)
        if not use_fused_render(s.fused, device=planes.device, dtype=planes.dtype, decoder=_EG3DWeights(decoder)):
            if dev not in FUSED_AUTO_DEVICES and has_native_kernel("render_triplane", planes.device):
                return "composed", (f"automatic: the {dev} render_triplane kernel is not measured yet (fused=True "
                                    f"turns it on)")
            return "composed", f"no render_triplane kernel for {dev} and {planes.dtype} in this build"
        return "fused", "EG3D-shaped decoder, axis-aligned planes"

    # -- the two paths ------------------------------------------------------------------------------------------

    def _oneshot_fused(self, planes, decoder, ray_origins, ray_directions, depths, opts):
        s = self._oneshot_settings
        dtype = _compute_dtype(planes)
        o, d = ray_origins.detach().to(dtype), ray_directions.detach().to(dtype)
        if planes.stride(2) != 1 and planes.shape[2] > 1:  # channels-last once for both passes and the backward
            planes = planes.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
        w = eg3d_decoder_weights(decoder, dtype)
        kw = dict(box_warp=opts.box_warp, axes=self.oneshot_axes(), clip_to_box=s.clip_to_box, density_bias=-1.0)
        n = opts.depth_resolution_importance
        if n > 0:
            with torch.no_grad():
                coarse = render_triplane(planes.detach(), o, d, depths.to(dtype).contiguous(),
                                         *(x.detach() for x in w), **kw)
                fine = importance_depths(depths, coarse.weights, n, s.deterministic)
                depths = torch.sort(torch.cat([depths, fine], -1), -1).values
        out = render_triplane(planes, o, d, depths.to(dtype).contiguous(), *w, **kw)
        rgb, depth = eg3d_outputs(out.features, out.opacity, out.depth, depths, opts.white_back)
        return rgb, depth.unsqueeze(-1), out.opacity.unsqueeze(-1)

    def _oneshot_samples(self, planes, decoder, ray_origins, ray_directions, depths, opts, options):
        B, N, S = depths.shape
        coords = (ray_origins.unsqueeze(-2) + depths.unsqueeze(-1) * ray_directions.unsqueeze(-2)).reshape(B, -1, 3)
        dirs = ray_directions.unsqueeze(-2).expand(-1, -1, S, -1).reshape(B, -1, 3)
        out = self.run_model(planes, decoder, coords, dirs, options)
        colors, sigma = out["rgb"].reshape(B, N, S, out["rgb"].shape[-1]), out["sigma"].reshape(B, N, S)
        if self._oneshot_settings.clip_to_box:
            inside = coords.detach().abs().amax(-1).reshape(B, N, S) <= opts.box_warp / 2
            sigma = torch.where(inside, sigma, sigma.new_tensor(OUTSIDE_DENSITY))
        return colors, sigma

    def _oneshot_composed(self, planes, decoder, ray_origins, ray_directions, depths, opts, options):
        s = self._oneshot_settings
        colors, sigma = self._oneshot_samples(planes, decoder, ray_origins, ray_directions, depths, opts, options)
        geo = torch.float64 if torch.float64 in (colors.dtype, sigma.dtype, depths.dtype) else torch.float32
        n = opts.depth_resolution_importance
        if n > 0:
            with torch.no_grad():
                c = colors.detach()
                weights = ray_march(c if c.dtype in (torch.float16, torch.bfloat16) else c.to(geo),
                                    sigma.detach().to(geo), depths.to(geo), density_bias=-1.0).weights
                fine = importance_depths(depths, weights, n, s.deterministic)
            colors_f, sigma_f = self._oneshot_samples(planes, decoder, ray_origins, ray_directions, fine, opts,
                                                      options)
            depths, order = torch.sort(torch.cat([depths, fine], -1), -1)
            colors = torch.gather(torch.cat([colors, colors_f], -2), -2,
                                  order.unsqueeze(-1).expand(-1, -1, -1, colors.shape[-1]))
            sigma = torch.gather(torch.cat([sigma, sigma_f], -1), -1, order)
        if colors.dtype not in (torch.float16, torch.bfloat16):
            colors = colors.to(geo)
        out = ray_march(colors, sigma.to(geo), depths.to(geo), density_bias=-1.0)
        rgb, depth = eg3d_outputs(out.features, out.opacity, out.depth, depths, opts.white_back)
        return rgb, depth.unsqueeze(-1), out.opacity.unsqueeze(-1)


class ImportanceRenderer(DropInRenderer, nn.Module):
    """EG3D's ``ImportanceRenderer`` on oneshot's kernels (see the module docstring), with EG3D's methods.

    ``ImportanceRenderer()`` behaves as EG3D's (its plane matrices, stochastic sampling, no box clipping);
    keyword-only switches (:class:`Settings`): ``plane_axes="goha"``, ``deterministic=True``,
    ``clip_to_box=True``, ``fused=False | True``, ``unknown_options="error"``.
    """

    def __init__(self, *, plane_axes=None, deterministic=False, clip_to_box=False, fused=True,
                 unknown_options="warn"):
        super().__init__()
        self._oneshot_settings = Settings(plane_axes, deterministic, clip_to_box, fused, unknown_options)
        self.ray_marcher = MipRayMarcher2()
        axes = self._oneshot_settings.plane_axes
        self.plane_axes = plane_matrices(axes) if axes is not None else plane_matrices("eg3d")

    def sort_samples(self, all_depths, all_colors, all_densities):
        """Sort samples [B, N, S, *] by depth (EG3D's)."""
        _, order = torch.sort(all_depths, dim=-2)
        return (torch.gather(all_depths, -2, order),
                torch.gather(all_colors, -2, order.expand(-1, -1, -1, all_colors.shape[-1])),
                torch.gather(all_densities, -2, order.expand(-1, -1, -1, 1)))

    def unify_samples(self, depths1, colors1, densities1, depths2, colors2, densities2):
        """Merge two sets of samples [B, N, S_i, *] and sort them by depth (EG3D's)."""
        return self.sort_samples(torch.cat([depths1, depths2], -2), torch.cat([colors1, colors2], -2),
                                 torch.cat([densities1, densities2], -2))

    def sample_stratified(self, ray_origins, ray_start, ray_end, depth_resolution, disparity_space_sampling=False):
        """EG3D's coarse depths [B, N, D, 1] (see :func:`.eg3d_sampling.stratified_depths`)."""
        if isinstance(ray_start, Tensor) or isinstance(ray_end, Tensor):
            raise RenderingOptionsError("per-ray ray_start / ray_end tensors (EG3D's 'auto' limits) are not supported")
        return stratified_depths(ray_origins, ray_start, ray_end, depth_resolution, disparity_space_sampling,
                                 self._oneshot_settings.deterministic).unsqueeze(-1)

    def sample_importance(self, z_vals, weights, N_importance):
        """EG3D's importance depths [B, N, n, 1] from depths [B, N, D, 1] and weights [B, N, D-1, 1]."""
        with torch.no_grad():
            fine = importance_depths(z_vals[..., 0], weights[..., 0], N_importance,
                                     self._oneshot_settings.deterministic)
        return fine.unsqueeze(-1)

    def sample_pdf(self, bins, weights, N_importance, det=False, eps=1e-5):
        """EG3D's inverse-CDF sampling: [R, N_importance] samples from bins [R, K + 1] weighted by [R, K]."""
        u = importance_u(weights.shape[0], N_importance, bins.device, det or self._oneshot_settings.deterministic)
        return sample_pdf(bins, weights, u, eps)
