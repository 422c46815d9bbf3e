"""Shared pieces of the oneshot.compat.eg3d tests (no tests here): scenes, options, decoders, an RNG spy."""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from oneshot.compat import eg3d


def options(**kw) -> dict:
    """EG3D's FFHQ rendering_kwargs (the renderer's keys and a few of the generator's), small sample counts."""
    base = dict(ray_start=2.25, ray_end=3.3, box_warp=1, depth_resolution=9, depth_resolution_importance=7,
                disparity_space_sampling=False, clamp_mode="softplus", image_resolution=512, c_scale=1.0,
                superresolution_module="training.superresolution.SuperresolutionHybrid8XDC", density_reg=0.25,
                avg_camera_radius=2.7, avg_camera_pivot=[0, 0, 0.2])
    base.update(kw)
    return base


def scene(B=2, N=23, C=5, H=9, W=11, Co=4, dtype=torch.float32, seed=0, spread=0.7):
    """planes [B, 3, C, H, W], ray origins / unit directions [B, N, 3] from a camera at radius 2.7 towards points
    of the box, and an EG3D OSGDecoder (C -> 64 -> 1 + Co) with random weights; all in `dtype`."""
    g = torch.Generator().manual_seed(seed)
    planes = torch.randn(B, 3, C, H, W, generator=g, dtype=torch.float64)
    target = (torch.rand(B, N, 3, generator=g, dtype=torch.float64) - 0.5) * spread
    origin = torch.tensor([0.05, -0.1, 2.7], dtype=torch.float64) + (torch.rand(B, 1, 3, generator=g,
                                                                               dtype=torch.float64) - 0.5) * 0.3
    origins = origin.expand(B, N, 3).contiguous()
    dirs = F.normalize(target - origins, dim=-1)
    dec = eg3d.OSGDecoder(C, {"decoder_lr_mul": 1, "decoder_output_dim": Co})
    with torch.no_grad():
        for p in dec.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * (1.0 if p.dim() == 2 else 0.5))
    return planes.to(dtype), origins.to(dtype), dirs.to(dtype), dec.to(dtype)


@contextlib.contextmanager
def default_dtype(dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


@contextlib.contextmanager
def rng_spy(monkeypatch):
    """Record every draw of the global RNG made through torch.rand / rand_like / randn / randn_like / randint /
    Tensor.uniform_ / normal_ from Python: [(function, shape, dtype, device)]."""
    log = []

    def wrap(owner, name):
        fn = getattr(owner, name)

        def spy(*args, **kwargs):
            out = fn(*args, **kwargs)
            if kwargs.get("generator") is None:
                t = out if isinstance(out, torch.Tensor) else args[0]
                log.append((name, tuple(t.shape), t.dtype, t.device.type))
            return out

        monkeypatch.setattr(owner, name, spy)

    for name in ("rand", "rand_like", "randn", "randn_like", "randint", "randperm", "bernoulli", "multinomial",
                 "normal"):
        wrap(torch, name)
    for name in ("uniform_", "normal_", "bernoulli_", "random_", "exponential_"):
        wrap(torch.Tensor, name)
    yield log


def eg3d_draws(B, N, options_, decoder_dtype=None, deterministic=False):
    """The draws EG3D's ImportanceRenderer.forward makes, from its source (see oneshot.compat.eg3d_sampling)."""
    dt = torch.get_default_dtype()
    D, n = options_["depth_resolution"], options_["depth_resolution_importance"]
    noise = options_.get("density_noise", 0) > 0
    draws = []
    if not deterministic:
        draws.append(("rand_like", (B, N, D, 1), dt, "cpu"))
    if noise:
        draws.append(("randn_like", (B, N * D, 1), decoder_dtype or dt, "cpu"))
    if n > 0:
        if not deterministic:
            draws.append(("rand", (B * N, n), dt, "cpu"))
        if noise:
            draws.append(("randn_like", (B, N * n, 1), decoder_dtype or dt, "cpu"))
    return draws


class UserFC(nn.Module):
    """A user's own copy of EG3D's FullyConnectedLayer (a different class than oneshot's)."""

    def __init__(self, i, o, lr_multiplier=1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(o, i) / lr_multiplier)
        self.bias = nn.Parameter(torch.zeros(o))
        self.weight_gain = lr_multiplier / math.sqrt(i)
        self.bias_gain = lr_multiplier
        self.activation = "linear"

    def forward(self, x):
        return torch.addmm((self.bias * self.bias_gain).unsqueeze(0), x, (self.weight * self.weight_gain).t())


class UserOSGDecoder(nn.Module):
    """A user's own OSGDecoder, EG3D's function, with `scale` / `uses_directions` to make it differ."""

    def __init__(self, C, Co, lr_multiplier=1.0, scale=1.002, uses_directions=False, act=None):
        super().__init__()
        self.net = nn.Sequential(UserFC(C, 64, lr_multiplier), act or nn.Softplus(), UserFC(64, 1 + Co, lr_multiplier))
        self.scale, self.uses_directions = scale, uses_directions

    def forward(self, sampled_features, ray_directions):
        x = sampled_features.mean(1)
        N, M, C = x.shape
        x = self.net(x.reshape(N * M, C)).reshape(N, M, -1)
        rgb = torch.sigmoid(x[..., 1:]) * self.scale - (self.scale - 1) / 2
        if self.uses_directions:
            rgb = rgb + 0.1 * ray_directions[..., :1]
        return {"rgb": rgb, "sigma": x[..., 0:1]}


class MLPDecoder(nn.Module):
    """A decoder that is not EG3D's (concatenated planes, ReLU, its own heads): the composed path."""

    def __init__(self, C, Co):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3 * C, 16), nn.ReLU(), nn.Linear(16, 1 + Co))

    def forward(self, sampled_features, ray_directions):
        N, P, M, C = sampled_features.shape
        y = self.body(sampled_features.permute(0, 2, 1, 3).reshape(N, M, P * C))
        return {"rgb": torch.sigmoid(y[..., 1:]), "sigma": y[..., :1] * 2}
