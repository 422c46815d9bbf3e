"""EG3D's importance-sampling volume renderer on oneshot's ops: ``triplane_sample`` -> decoder -> ``ray_march``
(composed), or ``render_triplane`` (the three fused), as ``RenderSettings.fused`` and ``oneshot.ops.use_fused_render``
decide."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import cameras
from ..ops import (PLANE_AXES_GOHA, channels_last, check_resolution, decoder_weights, ray_march, render_triplane,
                   triplane_sample, use_fused_render)

__all__ = ["VolumeRenderer", "VolumeRenderOutput", "RenderSettings", "sample_pdf", "check_fused"]


def check_fused(fused, name: str = "fused") -> bool | None:
    """The ``fused`` setting as None (automatic), True or False; "always", its old spelling of True, is taken as
    True (settings and configs written before it became a bool load unchanged)."""
    if isinstance(fused, str) and fused == "always":
        return True
    if fused is None or isinstance(fused, bool):
        return fused
    raise ValueError(f"{name} must be None (automatic), True (fused) or False (composed), got {fused!r}")


@dataclass(frozen=True)
class RenderSettings:
    """EG3D/GOHA's rendering settings (``rendering_kwargs``)."""

    samples: int = 48  # stratified samples per ray (depth_resolution)
    importance_samples: int = 48  # inverse-CDF samples per ray (depth_resolution_importance)
    ray_start: float = 2.25
    ray_end: float = 3.3
    box_warp: float = 1.0
    density_bias: float = -1.0  # EG3D's softplus(sigma - 1)
    axes: tuple = PLANE_AXES_GOHA
    chunk: int | None = None  # rays per pass (None: all at once); bounds the memory of large renders
    stratified: bool = True  # jitter the coarse depths and draw the importance u at random (EG3D); False:
    # evenly spaced depths and u (EG3D's det=True): a fully deterministic render, e.g. flicker-free video
    clip_to_box: bool = False  # no density outside the planes' box (EG3D: the decoder's output for zero features,
    # which shows as grey floaters at the sides of large-yaw views of briefly trained models)
    fused: bool | None = None  # sample + decoder + composite in one op (oneshot.ops.render_triplane): the same
    # values, and autograd keeps none of the per-sample tensors (the backward recomputes them). None: automatic
    # (oneshot.ops.use_fused_render: fused with EG3D's decoder and a native kernel for the planes' device and dtype,
    # on the devices where it measured faster, i.e. the CPU; the CUDA kernel is not measured yet); True: fused, or an
    # error saying why it cannot run; False: the composed ops (triplane_sample -> decoder -> ray_march)

    def __post_init__(self):
        if self.samples < 2 or self.importance_samples < 0:
            raise ValueError(f"need samples >= 2 and importance_samples >= 0, got {self.samples}, "
                             f"{self.importance_samples}")
        if not (0 <= self.ray_start < self.ray_end):
            raise ValueError(f"need 0 <= ray_start < ray_end, got {self.ray_start}, {self.ray_end}")
        if self.chunk is not None and self.chunk < 1:
            raise ValueError(f"chunk must be None or >= 1, got {self.chunk}")
        object.__setattr__(self, "fused", check_fused(self.fused))


class VolumeRenderOutput(NamedTuple):
    features: Tensor  # [B, C, H, W] composited features x 2 - 1 (the first 3 channels: RGB in [-1, 1])
    depth: Tensor  # [B, 1, H, W] expected distance along the (unit) ray
    opacity: Tensor  # [B, 1, H, W] accumulated weight


def sample_pdf(bins: Tensor, weights: Tensor, n: int, *, generator: torch.Generator | None = None,
               deterministic: bool = False, eps: float = 1e-5, u: Tensor | None = None) -> Tensor:
    """EG3D's inverse-CDF sampling: `n` samples per row [R, n] from the piecewise-constant pdf of `weights`
    [R, K] over the bins' edges [R, >= K + 1] (u ~ U(0, 1) from `generator`, or the given `u` [R, n]). As in
    EG3D, bins may have more edges than weights + 1 (it passes S - 1 midpoints with S - 3 weights); the extra
    ones are never used."""
    w = weights + eps
    pdf = w / w.sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, -1)], -1)  # [R, K + 1]
    if u is not None:
        pass
    elif deterministic:
        u = torch.linspace(0, 1, n, device=cdf.device, dtype=cdf.dtype).expand(cdf.shape[0], n).contiguous()
    else:
        u = _rand((cdf.shape[0], n), generator, cdf)
    idx = torch.searchsorted(cdf.contiguous(), u.contiguous(), right=True)
    below = (idx - 1).clamp(min=0)
    above = idx.clamp(max=cdf.shape[1] - 1)
    cdf_lo, cdf_hi = cdf.gather(1, below), cdf.gather(1, above)
    bin_lo, bin_hi = bins.gather(1, below), bins.gather(1, above)
    denom = cdf_hi - cdf_lo
    denom = torch.where(denom < eps, torch.ones_like(denom), denom)
    return bin_lo + (u - cdf_lo) / denom * (bin_hi - bin_lo)


def _rand(shape, generator, like: Tensor) -> Tensor:
    if generator is None or generator.device == like.device:
        return torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype)
    return torch.rand(shape, generator=generator, dtype=like.dtype).to(like.device)


class VolumeRenderer(nn.Module):
    """EG3D's ``ImportanceRenderer`` for tri-planes: per ray, `samples` stratified depths in [ray_start,
    ray_end] (each jittered by up to one bin), a coarse composite, then `importance_samples` more depths drawn
    from its weights (max-pool 2, avg-pool 2, + 0.01, inverse CDF over the coarse intervals' midpoints), merged
    and sorted with the coarse ones, and the final composite (``ray_march``, midpoint rule, softplus(sigma - 1)).

    forward(planes [B, 3, C, Hp, Wp], decoder, camera labels [B, 25] (or [25]), resolution) or
    :meth:`render_rays` for explicit rays. Pass a ``torch.Generator`` for reproducible jitter and importance
    samples (the deterministic mode for tests and evaluation); without one, the global RNG is used, as in EG3D.

    Each pass is either composed (``triplane_sample``, the decoder module, ``ray_march``) or fused
    (``render_triplane`` with the decoder's ``effective_weights()``): :func:`oneshot.ops.use_fused_render` decides
    from ``settings.fused``, the planes' device and dtype, the decoder and `backend` (the backend every op call
    gets).
    """

    def __init__(self, settings: RenderSettings | None = None, *, backend: str | None = None):
        super().__init__()
        self.settings = settings or RenderSettings()
        self.backend = backend

    def forward(self, planes: Tensor, decoder: nn.Module, camera: Tensor, resolution, *,
                generator: torch.Generator | None = None) -> VolumeRenderOutput:
        """Render camera labels [B, 25] (or [25]) at `resolution` (an int or (H, W))."""
        c2w, intr = cameras.split_label(camera)
        B = planes.shape[0]
        if c2w.shape[0] == 1 and B > 1:
            c2w, intr = c2w.expand(B, 4, 4), intr.expand(B, 3, 3)
        if c2w.shape[0] != B:
            raise ValueError(f"camera must be [25] or [B, 25] with B = {B} (the planes' batch), got "
                             f"{list(camera.shape)}")
        H, W = check_resolution(resolution)
        origins, dirs = cameras.rays(c2w.to(planes.device, torch.float32), intr.to(planes.device, torch.float32),
                                     (H, W))
        feats, depth, opacity = self.render_rays(planes, decoder, origins, dirs, generator=generator)
        to_image = lambda t: t.reshape(B, H, W, -1).permute(0, 3, 1, 2)  # noqa: E731
        return VolumeRenderOutput(to_image(feats), to_image(depth[..., None]), to_image(opacity[..., None]))

    def _sample(self, planes: Tensor, decoder: nn.Module, origins: Tensor, dirs: Tensor, depths: Tensor):
        B, R, S = depths.shape
        pts = (origins[:, :, None] + depths[..., None] * dirs[:, :, None]).reshape(B, R * S, 3)
        s = self.settings
        feats = triplane_sample(planes, pts, box_warp=s.box_warp, axes=s.axes, backend=self.backend)
        sigma, color = decoder(feats)
        if s.clip_to_box:  # softplus(-1e4) == 0: empty outside [-box_warp/2, box_warp/2]^3
            inside = pts.abs().amax(-1) <= s.box_warp / 2
            sigma = torch.where(inside.reshape(sigma.shape), sigma, sigma.new_tensor(-1e4))
        return color.reshape(B, R, S, -1), sigma.reshape(B, R, S)

    def render_rays(self, planes: Tensor, decoder: nn.Module, origins: Tensor, dirs: Tensor, *,
                    generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Composited features [B, R, C] (x 2 - 1), depth [B, R] and opacity [B, R] of rays [B, R, 3]."""
        if planes.dim() != 5 or planes.shape[1] != 3:
            raise ValueError(f"planes must be [B, 3, C, H, W], got {list(planes.shape)}")
        if origins.shape != dirs.shape or origins.dim() != 3 or origins.shape[-1] != 3 or origins.shape[0] != planes.shape[0]:
            raise ValueError(f"ray origins and directions must both be [B, R, 3] with B = {planes.shape[0]}, got "
                             f"{list(origins.shape)} and {list(dirs.shape)}")
        chunk = self.settings.chunk
        R = origins.shape[1]
        if chunk is None or R <= chunk:
            return self._render_chunk(planes, decoder, origins, dirs, generator)
        parts = [self._render_chunk(planes, decoder, origins[:, i:i + chunk], dirs[:, i:i + chunk], generator)
                 for i in range(0, R, chunk)]
        return tuple(torch.cat(p, 1) for p in zip(*parts))

    def _importance(self, coarse_weights, depths, generator, rows_per_pass: int = 2048, merge: bool = False):
        """The importance pass's depths [B, R, importance_samples] from the coarse weights [B, R, n - 1]; with
        `merge`, the coarse and fine depths together, sorted [B, R, n + importance_samples]. Rows go through in
        passes of `rows_per_pass` (EG3D's sampling builds ~a dozen [R, n] temporaries); u is drawn for all rows
        at once, so the result does not depend on the pass size."""
        s = self.settings
        B, R, n = depths.shape
        rows, m = B * R, s.importance_samples
        z = depths.reshape(rows, n)
        if s.stratified:
            u = _rand((rows, m), generator, z)
        else:
            u = torch.linspace(0, 1, m, device=z.device, dtype=z.dtype).expand(rows, m)
        out = z.new_empty(rows, n + m if merge else m)
        for r0 in range(0, rows, rows_per_pass):
            r1 = min(rows, r0 + rows_per_pass)
            w = coarse_weights.reshape(rows, 1, n - 1)[r0:r1].float()
            w = F.avg_pool1d(F.max_pool1d(w, 2, 1, padding=1), 2, 1).reshape(r1 - r0, n - 1) + 0.01
            zc = z[r0:r1]
            mids = 0.5 * (zc[:, :-1] + zc[:, 1:])  # n - 1 bin edges
            fine = sample_pdf(mids, w[:, 1:-1].to(z.dtype), m, u=u[r0:r1].contiguous())
            out[r0:r1] = torch.sort(torch.cat([zc, fine], -1), -1).values if merge else fine
        return out.reshape(B, R, -1)

    def _render_fused(self, planes, decoder, origins, dirs, depths, generator):
        s = self.settings
        # the kernel reads C contiguous channels per tap: one channels-last copy for the whole render (the coarse
        # pass, the final pass and its backward), not one per call
        planes = channels_last(planes)
        w = decoder_weights(decoder)
        kw = dict(box_warp=s.box_warp, axes=s.axes, clip_to_box=s.clip_to_box, density_bias=s.density_bias,
                  backend=self.backend)
        if s.importance_samples > 0:
            with torch.no_grad():
                coarse = render_triplane(planes.detach(), origins, dirs, depths, *(x.detach() for x in w), **kw)
                depths = self._importance(coarse.weights, depths, generator, merge=True)
        out = render_triplane(planes, origins, dirs, depths, *w, **kw)
        return out.features * 2 - 1, out.depth, out.opacity

    def _render_chunk(self, planes, decoder, origins, dirs, generator):
        s = self.settings
        B, R, _ = origins.shape
        geo = torch.float64 if planes.dtype == torch.float64 else torch.float32
        origins, dirs = origins.to(geo), dirs.to(geo)
        n = s.samples
        base = torch.linspace(s.ray_start, s.ray_end, n, device=origins.device, dtype=geo)
        depths = base.expand(B, R, n)
        if s.stratified:
            depths = depths + _rand((B, R, n), generator, base) * ((s.ray_end - s.ray_start) / (n - 1))
        if use_fused_render(s.fused, device=planes.device, dtype=planes.dtype, decoder=decoder, backend=self.backend):
            return self._render_fused(planes, decoder, origins, dirs, depths.contiguous(), generator)
        colors, sigma = self._sample(planes, decoder, origins, dirs, depths)
        if s.importance_samples > 0:
            with torch.no_grad():
                coarse = ray_march(colors.detach(), sigma.detach().to(geo), depths, density_bias=s.density_bias,
                                   backend=self.backend)
                fine = self._importance(coarse.weights, depths, generator)
            colors_f, sigma_f = self._sample(planes, decoder, origins, dirs, fine)
            depths = torch.cat([depths, fine], -1)
            order = torch.argsort(depths, -1)
            depths = depths.gather(-1, order)
            colors = torch.cat([colors, colors_f], -2).gather(-2, order[..., None].expand(-1, -1, -1, colors.shape[-1]))
            sigma = torch.cat([sigma, sigma_f], -1).gather(-1, order)
        out = ray_march(colors, sigma.to(geo), depths,
                        density_bias=s.density_bias, backend=self.backend)
        return out.features * 2 - 1, out.depth, out.opacity
