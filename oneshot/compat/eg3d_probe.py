"""The check ``patch()`` makes before swapping a renderer: the original and the drop-in render the same small
scenes from the same RNG state, and must give the same images and consume the same random numbers.

Copies of EG3D's renderer differ between code bases (PanoHead's tri-grid, Portrait4D's four-value ray marcher,
Real3D-Portrait's plane rescaling, ...), often under the same module path. Only a renderer that behaves as EG3D's
on these scenes is swapped; the others are left alone with the reason.

Two scenes, on the CPU, under ``torch.random.fork_rng`` (the caller's RNG is untouched):

* EG3D's FFHQ-like options (6 + 5 samples) with an ``OSGDecoder``: the drop-in's fused path;
* disparity sampling, ``white_back``, ``density_noise`` and a decoder that reads the ray directions: the composed
  path, the order of the noise draws, and what run_model passes to the decoder;

plus ``run_model`` at random points.
"""

from __future__ import annotations

import copy
import random

import torch
import torch.nn.functional as F
from torch import nn

from .eg3d_decoder import OSGDecoder

__all__ = ["probe_renderer"]

_TOL = 1e-4


class _DirectionalDecoder(nn.Module):
    """An EG3D-like decoder whose colour also depends on the ray directions (not EG3D-shaped on purpose)."""

    def __init__(self, channels: int, out: int, g: torch.Generator):
        super().__init__()
        self.w = nn.Parameter(torch.randn(1 + out, channels, generator=g) / channels ** 0.5)
        self.v = nn.Parameter(torch.randn(out, 3, generator=g))

    def forward(self, sampled_features, ray_directions):
        y = sampled_features.sum(1) @ self.w.t()
        return {"rgb": torch.sigmoid(y[..., 1:] + ray_directions @ self.v.t()), "sigma": y[..., :1] * 3}


def _scene(g: torch.Generator, B=2, N=7, C=6):
    planes = torch.randn(B, 3, C, 9, 10, generator=g)
    target = (torch.rand(B, N, 3, generator=g) - 0.5) * 0.6
    origin = torch.tensor([0.0, 0.05, 2.7]) + (torch.rand(B, 1, 3, generator=g) - 0.5) * 0.2
    origins = origin.expand(B, N, 3).contiguous()
    return planes, origins, F.normalize(target - origins, dim=-1)


def _osg(C: int, g: torch.Generator) -> OSGDecoder:
    dec = OSGDecoder(C, {"decoder_lr_mul": 1, "decoder_output_dim": 4})
    with torch.no_grad():
        for p in dec.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (1.0 if p.dim() == 2 else 0.5))
    return dec


def _compare(name: str, got, want) -> str | None:
    if not isinstance(want, (tuple, list)) or not isinstance(got, (tuple, list)) or len(want) != len(got):
        n = len(want) if isinstance(want, (tuple, list)) else type(want).__name__
        return f"{name}: the original returns {n} values, EG3D's renderer 3"
    for i, (a, b) in enumerate(zip(got, want)):
        if not isinstance(b, torch.Tensor) or a.shape != b.shape:
            return f"{name}: output {i} is {getattr(b, 'shape', type(b).__name__)}, the drop-in's {tuple(a.shape)}"
        err = float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
        if not err <= _TOL:
            return f"{name}: output {i} differs by {err:.3g} from the drop-in's (EG3D's semantics)"
    return None


class _OriginalFailed(Exception):
    pass


def _run_both(original, dropin, args, seed):
    torch.manual_seed(seed)
    try:
        want = original(*args)
    except Exception as e:  # noqa: BLE001 - the original failing on EG3D's arguments is the answer
        raise _OriginalFailed(f"{type(e).__name__}: {e}") from e
    after_original = torch.get_rng_state()
    torch.manual_seed(seed)
    got = dropin(*args)
    same_draws = torch.equal(after_original, torch.get_rng_state())
    return want, got, same_draws


def probe_renderer(original: nn.Module, dropin: nn.Module) -> str | None:
    """None when `original` (an EG3D-style renderer instance) and `dropin` (the drop-in built on the same state)
    agree on the probe scenes, else what differs. Both instances are probed as shallow copies on the CPU."""
    original, dropin = copy.copy(original), copy.copy(dropin)
    for r in (original, dropin):
        r.plane_axes = r.plane_axes.cpu()
    py_state = random.getstate()
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            g = torch.Generator().manual_seed(20250125)
            planes, o, d = _scene(g)
            ffhq = {"ray_start": 2.25, "ray_end": 3.3, "box_warp": 1, "depth_resolution": 6,
                    "depth_resolution_importance": 5, "disparity_space_sampling": False, "clamp_mode": "softplus"}
            odd = dict(ffhq, depth_resolution=5, depth_resolution_importance=4, disparity_space_sampling=True,
                       white_back=True, density_noise=0.3, box_warp=1.2)
            cases = (("EG3D's FFHQ options, OSGDecoder", _osg(planes.shape[2], g), ffhq),
                     ("disparity sampling, white_back, density_noise, a direction-dependent decoder",
                      _DirectionalDecoder(planes.shape[2], 3, g), odd))
            for k, (name, decoder, opts) in enumerate(cases):
                want, got, same = _run_both(original, dropin, (planes, decoder, o, d, opts), 11 + k)
                why = _compare(name, got, want)
                if why:
                    return why
                if not same:
                    return f"{name}: the original consumes the global RNG differently (another draw order)"
            pts = (torch.rand(2, 11, 3, generator=g) - 0.5) * 1.4
            dirs = F.normalize(torch.randn(2, 11, 3, generator=g), dim=-1)
            decoder = cases[1][1]
            try:
                want = original.run_model(planes, decoder, pts, dirs, ffhq)
            except Exception as e:  # noqa: BLE001
                raise _OriginalFailed(f"run_model: {type(e).__name__}: {e}") from e
            got = dropin.run_model(planes, decoder, pts, dirs, ffhq)
            if not isinstance(want, dict) or set(want) != set(got):
                return f"run_model: the original returns {type(want).__name__} " \
                       f"{sorted(want) if isinstance(want, dict) else ''}, EG3D's a dict of 'rgb' and 'sigma'"
            return _compare("run_model", [got[k] for k in sorted(got)], [want[k] for k in sorted(got)])
    except _OriginalFailed as e:
        return f"it fails on EG3D's arguments: {e}"
    finally:
        random.setstate(py_state)
