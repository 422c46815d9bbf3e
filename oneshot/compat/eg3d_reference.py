"""The composed reference of EG3D's renderer: EG3D's semantics in plain PyTorch (``grid_sample``, the decoder as a
module, a cumprod ray marcher), step by step in EG3D's shapes ([B, N, S, 1] depths and densities) and with EG3D's
random draws. Written here from EG3D's description, independently of the drop-in's own code paths.

It is the oracle of the tests (forward, gradients, RNG-draw order) and the baseline of benchmarks/bench_eg3d.py:
autograd keeps every per-sample tensor, as in EG3D. The switches (``plane_axes``, ``deterministic``,
``clip_to_box``) mean what they mean for the drop-in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .eg3d_planes import plane_matrices

__all__ = ["ReferenceRenderer", "reference_sample_from_planes", "reference_ray_march"]


def reference_sample_from_planes(plane_axes: Tensor,  # [n, 3, 3]
                                 planes: Tensor,  # [B, n, C, H, W]
                                 coordinates: Tensor,  # [B, M, 3]
                                 box_warp: float) -> Tensor:  # [B, n, M, C]
    """Points scaled by 2 / box_warp, projected with x @ inv(P) onto each plane, bilinear grid_sample with zero
    padding and align_corners=False; the grid in float32 (float64 with float64 planes)."""
    B, n, C, H, W = planes.shape
    M = coordinates.shape[1]
    x = (2 / box_warp) * coordinates
    inv = torch.linalg.inv(plane_axes.to(x.dtype))
    uv = torch.einsum("bmk,pkj->bpmj", x, inv)[..., :2]  # [B, n, M, 2]
    grid = uv.reshape(B * n, 1, M, 2).to(torch.float64 if planes.dtype == torch.float64 else torch.float32)
    out = F.grid_sample(planes.reshape(B * n, C, H, W), grid, mode="bilinear", padding_mode="zeros",
                        align_corners=False)  # [B n, C, 1, M]
    return out.reshape(B, n, C, M).transpose(2, 3)


def reference_ray_march(colors: Tensor,  # [B, N, S, C]
                        densities: Tensor,  # [B, N, S, 1]
                        depths: Tensor,  # [B, N, S, 1]
                        white_back: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """EG3D's MipRayMarcher2: (rgb [B, N, C] in [-1, 1], depth [B, N, 1], weights [B, N, S-1, 1])."""
    delta = depths[:, :, 1:] - depths[:, :, :-1]
    mid = lambda t: (t[:, :, :-1] + t[:, :, 1:]) / 2  # noqa: E731
    sigma = F.softplus(mid(densities) - 1)
    alpha = 1 - torch.exp(-(sigma * delta))
    keep = torch.cat([torch.ones_like(alpha[:, :, :1]), 1 - alpha + 1e-10], 2)
    weights = alpha * torch.cumprod(keep, 2)[:, :, :-1]
    rgb = (weights * mid(colors)).sum(2)
    total = weights.sum(2)
    depth = (weights * mid(depths)).sum(2) / total
    if depths.numel():  # (EG3D cannot render zero rays: min / max of nothing)
        depth = torch.clamp(torch.nan_to_num(depth, float("inf")), depths.min(), depths.max())
    if white_back:
        rgb = rgb + 1 - total
    return rgb * 2 - 1, depth, weights


class ReferenceRenderer(nn.Module):
    """EG3D's ImportanceRenderer in plain PyTorch: forward(planes [B, n, C, H, W], decoder, ray_origins [B, N, 3],
    ray_directions [B, N, 3], rendering_options) -> (rgb [B, N, C], depth [B, N, 1], weights_sum [B, N, 1])."""

    def __init__(self, plane_axes=None, deterministic: bool = False, clip_to_box: bool = False):
        super().__init__()
        self.plane_axes = plane_matrices("eg3d" if plane_axes is None else plane_axes)
        self.deterministic = deterministic
        self.clip_to_box = clip_to_box

    def run_model(self, planes, decoder, coordinates, directions, options):
        features = reference_sample_from_planes(self.plane_axes.to(planes.device), planes, coordinates,
                                                options["box_warp"])
        out = decoder(features, directions)
        if options.get("density_noise", 0) > 0:
            out["sigma"] = out["sigma"] + torch.randn_like(out["sigma"]) * options["density_noise"]
        return out

    def _samples(self, planes, decoder, o, d, depths, options):
        B, N, S, _ = depths.shape
        points = o[:, :, None, :] + depths * d[:, :, None, :]  # [B, N, S, 3]
        out = self.run_model(planes, decoder, points.reshape(B, N * S, 3),
                             d[:, :, None, :].expand(B, N, S, 3).reshape(B, N * S, 3), options)
        colors = out["rgb"].reshape(B, N, S, out["rgb"].shape[-1])
        sigma = out["sigma"].reshape(B, N, S, 1)
        if self.clip_to_box:
            outside = points.abs().amax(-1, keepdim=True) > options["box_warp"] / 2
            sigma = sigma.masked_fill(outside, -1e4)
        return colors, sigma

    def _stratified(self, o, options):
        B, N, _ = o.shape
        D = options["depth_resolution"]
        start, end = options["ray_start"], options["ray_end"]
        if options["disparity_space_sampling"]:
            steps = torch.linspace(0, 1, D, device=o.device)[None, None, :, None].repeat(B, N, 1, 1)
            if not self.deterministic:
                steps += torch.rand_like(steps) * (1 / (D - 1))
            return 1. / (1. / start * (1. - steps) + 1. / end * steps)
        depths = torch.linspace(start, end, D, device=o.device)[None, None, :, None].repeat(B, N, 1, 1)
        if not self.deterministic:
            depths += torch.rand_like(depths) * ((end - start) / (D - 1))
        return depths

    def _importance(self, depths, weights, n):
        B, N, S, _ = depths.shape
        with torch.no_grad():
            z = depths.reshape(B * N, S)
            w = weights.reshape(B * N, 1, S - 1).to(z.dtype)  # EG3D: .float() (its depths are float32)
            w = F.avg_pool1d(F.max_pool1d(w, 2, 1, padding=1), 2, 1)[:, 0] + 0.01
            bins, w = 0.5 * (z[:, :-1] + z[:, 1:]), w[:, 1:-1] + 1e-5
            K = w.shape[1]
            cdf = torch.cumsum(w / w.sum(-1, keepdim=True), -1)
            cdf = torch.cat([torch.zeros_like(cdf[:, :1]), cdf], -1)
            if self.deterministic:
                u = torch.linspace(0, 1, n, device=z.device).expand(B * N, n).contiguous()
            else:
                u = torch.rand(B * N, n, device=z.device)
            idx = torch.searchsorted(cdf, u, right=True)
            pair = torch.stack([(idx - 1).clamp(min=0), idx.clamp(max=K)], -1).view(B * N, 2 * n)
            c = torch.gather(cdf, 1, pair).view(B * N, n, 2)
            b = torch.gather(bins, 1, pair).view(B * N, n, 2)
            step = c[..., 1] - c[..., 0]
            step[step < 1e-5] = 1
            fine = b[..., 0] + (u - c[..., 0]) / step * (b[..., 1] - b[..., 0])
        return fine.reshape(B, N, n, 1)

    def forward(self, planes, decoder, ray_origins, ray_directions, rendering_options):
        opts = rendering_options
        depths = self._stratified(ray_origins, opts)
        colors, sigma = self._samples(planes, decoder, ray_origins, ray_directions, depths, opts)
        n = opts["depth_resolution_importance"]
        if n > 0:
            _, _, weights = reference_ray_march(colors, sigma, depths, opts.get("white_back", False))
            fine = self._importance(depths, weights, n)
            colors_f, sigma_f = self._samples(planes, decoder, ray_origins, ray_directions, fine, opts)
            depths = torch.cat([depths, fine], 2)
            order = torch.sort(depths, 2).indices
            depths = torch.gather(depths, 2, order)
            colors = torch.gather(torch.cat([colors, colors_f], 2), 2, order.expand(-1, -1, -1, colors.shape[-1]))
            sigma = torch.gather(torch.cat([sigma, sigma_f], 2), 2, order)
        rgb, depth, weights = reference_ray_march(colors, sigma, depths, opts.get("white_back", False))
        return rgb, depth, weights.sum(2)
