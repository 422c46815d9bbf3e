"""Where EG3D's renderer samples: its ``rendering_options``, the stratified depths, the importance sampler, and
its ``RaySampler``.

Random numbers, in EG3D's order (the global RNG; D = depth_resolution, n = depth_resolution_importance, N rays
in a batch of B, dtype = torch's default dtype, device = the rays'):

1. the jitter of the stratified depths: ``torch.rand_like`` of a [B, N, D, 1] tensor (both sampling spaces);
2. if ``density_noise > 0``: ``torch.randn_like`` of the coarse sigma [B, N * D, 1] (the decoder's dtype);
3. if n > 0: the importance sampler's u, ``torch.rand(B * N, n)``;
4. if n > 0 and ``density_noise > 0``: ``torch.randn_like`` of the fine sigma [B, N * n, 1].

With ``deterministic`` (the switch) 1 and 3 are not drawn: evenly spaced depths and u = linspace(0, 1, n)
(EG3D's ``det=True``).
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["RenderOptions", "RenderingOptionsError", "EG3DCompatWarning", "parse_options", "stratified_depths",
           "importance_depths", "sample_pdf", "RaySampler", "RENDERER_KEYS", "GENERATOR_KEYS"]


class RenderingOptionsError(ValueError):
    """A ``rendering_options`` key is missing, has a value the renderer cannot honour, or is not supported."""


class EG3DCompatWarning(UserWarning):
    """oneshot.compat.eg3d met something it does not use (an unknown option) or will not patch."""


#: Keys EG3D's renderer reads (the first seven with ``[]``: they must be present).
RENDERER_KEYS = ("ray_start", "ray_end", "box_warp", "depth_resolution", "depth_resolution_importance",
                 "disparity_space_sampling", "clamp_mode", "white_back", "density_noise")
_REQUIRED = RENDERER_KEYS[:7]

#: Keys EG3D-derived generators keep in the same dict for other parts (generator, super-resolution, loss,
#: visualiser): the renderer passes them by. From EG3D's FFHQ / AFHQ / ShapeNet configs, GOHA, Next3D, Portrait4D.
GENERATOR_KEYS = frozenset({
    "image_resolution", "superresolution_module", "c_gen_conditioning_zero", "gpc_reg_prob", "c_scale",
    "superresolution_noise_mode", "density_reg", "density_reg_p_dist", "reg_type", "decoder_lr_mul", "sr_antialias",
    "avg_camera_radius", "avg_camera_pivot", "depth_resolution_default", "depth_resolution_importance_default",
    "return_normal", "gen_exp_cond",
})

#: Keys other EG3D-derived renderers read that change rendering, with the one value this renderer matches.
_FOREIGN_RENDERER_KEYS = {"triplane_depth": 1}

_warned: set = set()


@dataclass(frozen=True)
class RenderOptions:
    """The renderer's reading of EG3D's ``rendering_options``."""

    ray_start: float
    ray_end: float
    box_warp: float
    depth_resolution: int
    depth_resolution_importance: int
    disparity_space_sampling: bool
    white_back: bool
    density_noise: float


def _real(key, value, low=-math.inf, open_low=False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise RenderingOptionsError(f"rendering_options[{key!r}] must be a finite number, got {value!r}")
    value = float(value)
    if value < low or (open_low and value == low):
        raise RenderingOptionsError(f"rendering_options[{key!r}] must be {'>' if open_low else '>='} {low:g}, got "
                                    f"{value!r}")
    return value


def _int(key, value, low) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise RenderingOptionsError(f"rendering_options[{key!r}] must be an integer >= {low}, got {value!r}")
    return int(value)


def _flag(key, value) -> bool:
    if value not in (True, False):  # bools and 0 / 1
        raise RenderingOptionsError(f"rendering_options[{key!r}] must be True or False, got {value!r}")
    return bool(value)


def parse_options(options, unknown: str = "warn") -> RenderOptions:
    """Check EG3D's ``rendering_options`` and read the renderer's keys. A missing key, a value the renderer cannot
    honour (``ray_start='auto'``, ``clamp_mode`` other than 'softplus', ...) or a rendering key of another
    renderer raises :class:`RenderingOptionsError`; a key nobody is known to read gives one
    :class:`EG3DCompatWarning` (``unknown="warn"``), an error (``"error"``) or nothing (``"ignore"``)."""
    if not hasattr(options, "keys") or not hasattr(options, "__getitem__"):
        raise RenderingOptionsError(f"rendering_options must be a dict (EG3D's rendering_kwargs), got "
                                    f"{type(options).__name__}")
    missing = [k for k in _REQUIRED if k not in options]
    if missing:
        raise RenderingOptionsError(f"rendering_options is missing {missing} (EG3D's renderer reads "
                                    f"{list(_REQUIRED)}; EG3D's FFHQ config: ray_start 2.25, ray_end 3.3, box_warp 1, "
                                    f"depth_resolution 48, depth_resolution_importance 48, "
                                    f"disparity_space_sampling False, clamp_mode 'softplus')")
    start, end = options["ray_start"], options["ray_end"]
    if isinstance(start, str) or isinstance(end, str):
        raise RenderingOptionsError(
            f"rendering_options ray_start={start!r}, ray_end={end!r}: oneshot.compat.eg3d supports numeric ray "
            f"limits only ('auto', the per-ray box intersection, is not implemented); give the near and far depths")
    start, end = _real("ray_start", start), _real("ray_end", end)
    if not start < end:
        raise RenderingOptionsError(f"rendering_options needs ray_start < ray_end, got {start!r} and {end!r}")
    if options["clamp_mode"] != "softplus":
        raise RenderingOptionsError(f"rendering_options['clamp_mode'] must be 'softplus' (the only density activation "
                                    f"of EG3D's MipRayMarcher2), got {options['clamp_mode']!r}")
    disparity = _flag("disparity_space_sampling", options["disparity_space_sampling"])
    if disparity and start <= 0:
        raise RenderingOptionsError(f"disparity_space_sampling needs ray_start > 0 (it samples 1 / depth), got "
                                    f"{start!r}")
    for key, good in _FOREIGN_RENDERER_KEYS.items():
        if key in options and options[key] != good:
            raise RenderingOptionsError(f"rendering_options[{key!r}] = {options[key]!r} belongs to another renderer "
                                        f"(e.g. PanoHead's tri-grid); oneshot.compat.eg3d renders tri-planes "
                                        f"({key} = {good})")
    known = set(RENDERER_KEYS) | GENERATOR_KEYS | set(_FOREIGN_RENDERER_KEYS)
    stray = sorted(str(k) for k in options.keys() if k not in known)
    if stray and unknown != "ignore":
        msg = (f"rendering_options keys {stray} are not read by oneshot.compat.eg3d's renderer (it reads "
               f"{list(RENDERER_KEYS)}); if your renderer used them, it rendered differently")
        if unknown == "error":
            raise RenderingOptionsError(msg)
        if tuple(stray) not in _warned:
            _warned.add(tuple(stray))
            warnings.warn(msg, EG3DCompatWarning, stacklevel=3)
    D = _int("depth_resolution", options["depth_resolution"], 2)
    n = _int("depth_resolution_importance", options["depth_resolution_importance"], 0)
    if n > 0 and D < 4:
        raise RenderingOptionsError(f"rendering_options['depth_resolution'] must be >= 4 with importance samples "
                                    f"(EG3D's sampler smooths the D - 1 coarse weights and drops the two end ones, "
                                    f"leaving none below 4), got {D}")
    return RenderOptions(
        ray_start=start, ray_end=end,
        box_warp=_real("box_warp", options["box_warp"], 0.0, open_low=True),
        depth_resolution=D,
        depth_resolution_importance=n,
        disparity_space_sampling=disparity,
        white_back=_flag("white_back", options.get("white_back", False)),
        density_noise=_real("density_noise", options.get("density_noise", 0), 0.0),
    )


def stratified_depths(ray_origins: Tensor,  # [B, N, 3]
                      ray_start: float, ray_end: float, depth_resolution: int, disparity_space_sampling: bool = False,
                      deterministic: bool = False) -> Tensor:  # [B, N, D] in torch's default dtype
    """EG3D's coarse depths: D evenly spaced depths in [ray_start, ray_end] (or in disparity) per ray, each jittered
    by U(0, 1) of one spacing, drawn as ``rand_like`` of a [B, N, D, 1] tensor (EG3D's draw); none with
    `deterministic`."""
    B, N = ray_origins.shape[:2]
    D = depth_resolution
    dev = ray_origins.device
    if disparity_space_sampling:
        s = torch.linspace(0, 1, D, device=dev).reshape(1, 1, D, 1).repeat(B, N, 1, 1)
        if not deterministic:
            s = s + torch.rand_like(s) * (1 / (D - 1))
        t = 1. / (1. / ray_start * (1. - s) + 1. / ray_end * s)
    else:
        t = torch.linspace(ray_start, ray_end, D, device=dev).reshape(1, 1, D, 1).repeat(B, N, 1, 1)
        if not deterministic:
            t = t + torch.rand_like(t) * ((ray_end - ray_start) / (D - 1))
    return t.squeeze(-1)


def sample_pdf(bins: Tensor,  # [R, K + 1] (or more edges: the extra ones are never read)
               weights: Tensor,  # [R, K]
               u: Tensor,  # [R, n] in [0, 1]
               eps: float = 1e-5) -> Tensor:  # [R, n]
    """EG3D's inverse-CDF step: the samples at u of the piecewise-linear CDF of `weights` (+ eps) over the bins'
    edges; a bin whose CDF step is below eps maps to its lower edge."""
    K = weights.shape[-1]
    w = weights + eps
    pdf = w / torch.sum(w, -1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, -1)], -1)  # [R, K + 1]
    if cdf.dtype != u.dtype:
        cdf = cdf.to(u.dtype)
    idx = torch.searchsorted(cdf, u.contiguous(), right=True)
    below = torch.clamp_min(idx - 1, 0)
    above = torch.clamp_max(idx, K)
    cdf_lo, cdf_hi = torch.gather(cdf, 1, below), torch.gather(cdf, 1, above)
    bin_lo, bin_hi = torch.gather(bins, 1, below), torch.gather(bins, 1, above)
    denom = cdf_hi - cdf_lo
    denom = torch.where(denom < eps, torch.ones_like(denom), denom)
    return bin_lo + (u - cdf_lo) / denom * (bin_hi - bin_lo)


def importance_u(rows: int, n: int, device, deterministic: bool) -> Tensor:
    """EG3D's u for the importance sampler: ``torch.rand(rows, n)`` (the draw), or linspace(0, 1, n)."""
    if deterministic:
        return torch.linspace(0, 1, n, device=device).expand(rows, n)
    return torch.rand(rows, n, device=device)


def importance_depths(depths: Tensor,  # [B, N, D] coarse depths
                      weights: Tensor,  # [B, N, D - 1] coarse compositing weights
                      n: int, deterministic: bool = False, rows_per_pass: int = 8192) -> Tensor:  # [B, N, n]
    """EG3D's importance sampler: the coarse weights max-pooled (2, stride 1, padding 1) and average-pooled (2),
    + 0.01, the two end values dropped; then :func:`sample_pdf` over the coarse depths' midpoints. u is drawn for
    all rows at once (EG3D's draw); the rest runs in passes of `rows_per_pass` rows to bound its temporaries."""
    B, N, D = depths.shape
    rows = B * N
    z = depths.reshape(rows, D)
    u = importance_u(rows, n, z.device, deterministic)
    w_all = weights.detach().reshape(rows, 1, D - 1).to(z.dtype)  # EG3D: .float() (its depths are float32)
    out = z.new_empty(rows, n)
    for r0 in range(0, rows, rows_per_pass):
        r1 = min(rows, r0 + rows_per_pass)
        w = F.avg_pool1d(F.max_pool1d(w_all[r0:r1], 2, 1, padding=1), 2, 1).squeeze(1) + 0.01
        zc = z[r0:r1]
        mids = 0.5 * (zc[:, :-1] + zc[:, 1:])
        out[r0:r1] = sample_pdf(mids, w[:, 1:-1], u[r0:r1])
    return out.reshape(B, N, n)


class RaySampler(nn.Module):
    """EG3D's ``RaySampler``: forward(cam2world_matrix [B, 4, 4] (OpenCV axes), intrinsics [B, 3, 3] (normalised by
    the image size, skew intrinsics[:, 0, 1] honoured), resolution: int) -> (ray_origins [B, res^2, 3],
    ray_directions [B, res^2, 3] unit); pixel centres (j + 0.5) / res, (i + 0.5) / res, row-major."""

    def __init__(self):
        super().__init__()
        self.ray_origins_h, self.ray_directions, self.depths, self.image_coords, self.rendering_options = (
            None, None, None, None, None)

    def forward(self, cam2world_matrix: Tensor, intrinsics: Tensor, resolution: int) -> tuple[Tensor, Tensor]:
        if not isinstance(cam2world_matrix, Tensor) or cam2world_matrix.dim() != 3 or \
                tuple(cam2world_matrix.shape[1:]) != (4, 4):
            raise ValueError(f"cam2world_matrix must be [B, 4, 4], got "
                             f"{getattr(cam2world_matrix, 'shape', type(cam2world_matrix).__name__)}")
        B = cam2world_matrix.shape[0]
        if not isinstance(intrinsics, Tensor) or tuple(intrinsics.shape) != (B, 3, 3):
            raise ValueError(f"intrinsics must be [B, 3, 3] with B = {B}, got "
                             f"{getattr(intrinsics, 'shape', type(intrinsics).__name__)}")
        if isinstance(resolution, bool) or not isinstance(resolution, numbers.Integral) or resolution < 1:
            raise ValueError(f"resolution must be a positive int (square images, as EG3D's), got {resolution!r}")
        res, dev = int(resolution), cam2world_matrix.device
        centre = torch.arange(res, dtype=torch.float32, device=dev) * (1. / res) + (0.5 / res)
        x_cam = centre.repeat(res).unsqueeze(0).expand(B, -1)  # [B, M]: column index fastest
        y_cam = centre.repeat_interleave(res).unsqueeze(0).expand(B, -1)
        z_cam = torch.ones((B, res * res), device=dev)
        fx, fy = intrinsics[:, 0, 0, None], intrinsics[:, 1, 1, None]
        cx, cy, sk = intrinsics[:, 0, 2, None], intrinsics[:, 1, 2, None], intrinsics[:, 0, 1, None]
        x_lift = (x_cam - cx + cy * sk / fy - sk * y_cam / fy) / fx * z_cam
        y_lift = (y_cam - cy) / fy * z_cam
        cam_points = torch.stack((x_lift, y_lift, z_cam, torch.ones_like(z_cam)), dim=-1)  # [B, M, 4]
        world = torch.bmm(cam2world_matrix, cam_points.permute(0, 2, 1)).permute(0, 2, 1)[:, :, :3]
        origin = cam2world_matrix[:, :3, 3]
        directions = F.normalize(world - origin[:, None, :], dim=2)
        return origin.unsqueeze(1).repeat(1, res * res, 1), directions
