"""Shaded rendering of morphable-model meshes: Lambertian with spherical-harmonics lighting (Deep3DFaceRecon's
27 gamma coefficients), face and region masks, at any resolution, on top of ``oneshot.ops.rasterize_mesh``.

Lighting follows Deep3DFaceRecon's ``compute_color``: 9 real SH basis functions of the unit normal in an
OpenGL-style camera frame (x right, y up, z towards the viewer) with the Lambertian kernel folded in
(a = pi, 2 pi / sqrt(3), 2 pi / sqrt(8)), per-channel coefficients gamma [B, 27] read as [B, 3, 9], 0.8 added to
the DC term of every channel; colour = albedo * (Y(n) . gamma). Models without an albedo use a constant skin
tone. Attributes are interpolated perspective-correctly (barycentrics weighted by 1 / z).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from .. import cameras
from ..ops import check_resolution, rasterize_mesh
from .coeffs import Coeffs
from .model import REGIONS, MorphableModel

__all__ = ["vertex_normals", "sh_basis", "shade", "render", "frontal_render", "neutral_render", "RenderResult",
           "SKIN_TONE"]

SKIN_TONE = (0.86, 0.66, 0.54)
_A = (math.pi, 2 * math.pi / math.sqrt(3.0), 2 * math.pi / math.sqrt(8.0))
_C = (1 / math.sqrt(4 * math.pi), math.sqrt(3.0) / math.sqrt(4 * math.pi), 3 * math.sqrt(5.0) / math.sqrt(12 * math.pi))
INIT_LIGHT = 0.8


class RenderResult(NamedTuple):
    image: Tensor  # [B, 3, H, W] in [0, 1] (background 0)
    mask: Tensor  # [B, 1, H, W] float, 1 where the mesh covers the pixel centre
    regions: dict  # name -> [B, 1, H, W] float masks ("face", "eyes", "brows", "mouth")
    depth: Tensor  # [B, 1, H, W] view depth (inf where empty)
    face_index: Tensor  # [B, H, W] int64 (-1 where empty)


def vertex_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    """Unit vertex normals [B, V, 3]: the area-weighted sum of the adjacent faces' normals (right-hand rule, so
    outward for counter-clockwise triangles)."""
    v0, v1, v2 = (vertices[:, faces[:, k]] for k in range(3))
    fn = torch.cross(v1 - v0, v2 - v0, dim=-1)  # length = 2 x area
    n = torch.zeros_like(vertices)
    for k in range(3):
        n.index_add_(1, faces[:, k], fn)
    return torch.nn.functional.normalize(n, dim=-1, eps=1e-12)


def sh_basis(normals: Tensor) -> Tensor:
    """[..., 9] Deep3DFaceRecon's SH basis (with the Lambertian kernel) of unit normals [..., 3] (camera frame,
    y up, z towards the viewer)."""
    x, y, z = normals[..., 0], normals[..., 1], normals[..., 2]
    a, c = _A, _C
    return torch.stack([
        torch.full_like(x, a[0] * c[0]),
        -a[1] * c[1] * y,
        a[1] * c[1] * z,
        -a[1] * c[1] * x,
        a[2] * c[2] * x * y,
        -a[2] * c[2] * y * z,
        0.5 * a[2] * c[2] / math.sqrt(3.0) * (3 * z * z - 1),
        -a[2] * c[2] * x * z,
        0.5 * a[2] * c[2] * (x * x - y * y),
    ], dim=-1)


def shade(albedo: Tensor, normals_cam: Tensor, gamma: Tensor) -> Tensor:
    """Per-vertex colour [B, V, 3] = albedo * (SH(n) . (gamma + 0.8 DC)); gamma [B, 27] (3 channels x 9)."""
    if gamma.dim() != 2 or gamma.shape[1] != 27:
        raise ValueError(f"gamma must be [B, 27] (3 colour channels x 9 SH coefficients), got {list(gamma.shape)}")
    g = gamma.reshape(-1, 3, 9).clone()
    g[:, :, 0] += INIT_LIGHT
    light = torch.einsum("bvk,bck->bvc", sh_basis(normals_cam), g.to(normals_cam))
    return albedo * light


def render(model: MorphableModel, vertices: Tensor, camera: Tensor, resolution, *, albedo: Tensor | None = None,
           gamma: Tensor | None = None) -> RenderResult:
    """Render vertices [B, V, 3] (world frame) of `model` seen by camera labels [B, 25] (or [25]).

    albedo: [B, V, 3] (default: the model's mean albedo, or a constant skin tone); gamma: [B, 27] lighting
    (default 0: ambient light only, 0.8 DC).
    """
    if vertices.dim() != 3 or vertices.shape[1:] != (model.num_vertices, 3):
        raise ValueError(f"vertices must be [B, V, 3] with V = {model.num_vertices} (the model's), got "
                         f"{list(vertices.shape)}")
    B = vertices.shape[0]
    c2w, intr = cameras.split_label(camera.to(vertices.device))
    if c2w.shape[0] == 1 and B > 1:
        c2w, intr = c2w.expand(B, 4, 4), intr.expand(B, 3, 3)
    if c2w.shape[0] != B:
        raise ValueError(f"camera must be [25] or [B, 25] with B = {B}, got {list(camera.shape)}")
    H, W = check_resolution(resolution)
    c2w, intr = c2w.to(vertices), intr.to(vertices)
    uv, z = cameras.project(vertices, c2w, intr, (H, W))
    face_index, bary, depth = rasterize_mesh(torch.cat([uv, z[..., None]], -1), model.faces, (H, W))
    if albedo is None:
        albedo = model.albedo() if model.has_albedo else torch.tensor(SKIN_TONE).expand(1, model.num_vertices, 3)
        albedo = albedo.to(vertices).expand(B, -1, -1)
    if gamma is None:
        gamma = vertices.new_zeros(B, 27)
    # Normals in an OpenGL-style camera frame: x right, y up, z towards the viewer.
    n_world = vertex_normals(vertices, model.faces)
    rot = c2w[:, :3, :3]  # columns: right, down, forward (OpenCV)
    n_cam = torch.einsum("bvc,bck->bvk", n_world, rot) * n_world.new_tensor([1.0, -1.0, -1.0])
    colors = shade(albedo, n_cam, gamma)
    hit = face_index >= 0
    tri = model.faces[face_index.clamp(min=0)]  # [B, H, W, 3]
    # Perspective-correct weights: screen barycentrics over vertex depth, renormalised.
    zt = torch.gather(z[:, None, None, :].expand(B, H, W, -1), 3, tri)
    w = bary.to(vertices) / zt.clamp(min=1e-12)
    w = w / w.sum(-1, keepdim=True).clamp(min=1e-30)
    w = torch.where(hit[..., None], w, torch.zeros_like(w))

    # Colours and region labels interpolated together: [B, V, 3 + R] -> [B, 3 + R, H, W].
    labels = torch.stack([model.region(name) for name in REGIONS], -1).to(vertices)
    attr = torch.cat([colors, labels[None].expand(B, -1, -1)], -1)
    vals = attr[torch.arange(B, device=attr.device)[:, None, None, None], tri]  # [B, H, W, 3, 3 + R]
    out = (w[..., None] * vals).sum(-2).permute(0, 3, 1, 2)
    image = out[:, :3].clamp(0, 1)
    regions = {name: out[:, 3 + k:4 + k].gt(0.5).to(vertices) for k, name in enumerate(REGIONS)}
    mask = hit[:, None].to(vertices)
    return RenderResult(image * mask, mask, {k: v * mask for k, v in regions.items()}, depth[:, None].to(vertices),
                        face_index)


def frontal_render(model: MorphableModel, source: Coeffs, target: Coeffs, resolution=224) -> RenderResult:
    """The expression branch's input: the source identity (shape and albedo) with the target's expression,
    seen from the fixed frontal camera under ambient light (the paper renders the 3DMM at 224 x 224)."""
    source.check(model)
    target.check(model)
    verts = model.vertices(source.identity, target.expression)
    albedo = model.albedo(source.albedo) if model.has_albedo else None
    cam = cameras.frontal_label(device=verts.device, dtype=verts.dtype)
    return render(model, verts, cam, resolution, albedo=albedo)


def neutral_render(model: MorphableModel, coeffs: Coeffs, camera: Tensor, resolution=224) -> RenderResult:
    """The identity with a neutral expression, seen by `camera` (the source pose): the neutral-expression
    loss's target and the source of the eye and mouth masks."""
    coeffs.check(model)
    verts = model.vertices(coeffs.identity, None)
    albedo = model.albedo(coeffs.albedo) if model.has_albedo else None
    return render(model, verts, camera, resolution, albedo=albedo, gamma=coeffs.lighting)
