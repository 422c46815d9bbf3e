"""Inputs shaped like the real workload: camera rays through the tri-plane box, and a lifted depth map."""

from __future__ import annotations

import math

import torch

FOCAL = 1 / (2 * math.tan(math.radians(18.837) / 2))  # normalised focal length, 4.2647


def frontal_rays(res: int, device="cpu", radius: float = 2.7):
    """Rays [res*res, 3] origins and unit directions from a camera on +z looking at the origin (OpenCV axes)."""
    i, j = torch.meshgrid(torch.arange(res, device=device), torch.arange(res, device=device), indexing="ij")
    x = ((j + 0.5) / res - 0.5) / FOCAL
    y = ((i + 0.5) / res - 0.5) / FOCAL
    d = torch.stack([x, -y, -torch.ones_like(x)], -1).reshape(-1, 3)  # world: x right, y up, camera looks at -z
    d = d / d.norm(dim=-1, keepdim=True)
    o = torch.tensor([0.0, 0.0, radius], device=device).expand_as(d)
    return o, d


def ray_samples(res: int, samples: int, near=2.25, far=3.3, device="cpu", seed=0):
    """Stratified sample points [1, res*res*samples, 3] along frontal rays, as the renderer produces them."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    o, d = frontal_rays(res, device)
    t = torch.linspace(near, far, samples, device=device)
    t = t + (torch.rand(o.shape[0], samples, generator=g).to(device) * (far - near) / samples)
    pts = o[:, None, :] + t[..., None] * d[:, None, :]
    return pts.reshape(1, -1, 3)


def lifted_depth(res: int = 128, device="cpu"):
    """Points [1, res*res, 3] of a depth map lifted to 3D, every pixel kept (the released GOHA code's way):
    an ellipsoidal head of semi-axes (0.22, 0.3, 0.22) in front of the camera, missed rays at the far depth."""
    o, d = frontal_rays(res, device)
    axes = torch.tensor([0.22, 0.3, 0.22], device=device)
    oo, dd = o / axes, d / axes  # ray-ellipsoid intersection in the unit-sphere frame
    a = (dd * dd).sum(-1)
    b = 2 * (oo * dd).sum(-1)
    c = (oo * oo).sum(-1) - 1
    disc = b * b - 4 * a * c
    t_hit = (-b - disc.clamp(min=0).sqrt()) / (2 * a)
    t = torch.where(disc > 0, t_hit, torch.full_like(t_hit, 3.3))
    return (o + t[:, None] * d).reshape(1, -1, 3)
