"""A quick look at an exported mesh without a 3D program: shaded through oneshot's own rasterizer
(``oneshot.ops.rasterize_mesh``) from a camera label, Lambertian under a light at the camera (a headlight) plus
ambient, in grey or in the mesh's vertex colours."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .. import cameras
from ..ops import rasterize_mesh
from .mesh import AvatarMesh

__all__ = ["render_mesh"]


@torch.no_grad()
def render_mesh(mesh: AvatarMesh, camera: Tensor, resolution: int, *, colors: bool = False,
                ambient: float = 0.25, background: float = 1.0) -> np.ndarray:
    """The mesh seen by a camera, shaded.

    Args:
        mesh: an :class:`~oneshot.export.AvatarMesh` (world frame).
        camera: a camera label [1, 25] or [25] (:mod:`oneshot.cameras`).
        resolution: the image side (int) or (H, W).
        colors: shade the vertex colours (else a light grey).
        ambient: the light that reaches every surface; the headlight adds ``(1 - ambient) |cos|`` with the
            angle between the (smooth, area-weighted vertex) normal and the view ray.
        background: the grey level where no triangle is.

    Returns:
        uint8 [H, W, 3] RGB.
    """
    from ..face3d.renderer import vertex_normals

    if not isinstance(mesh, AvatarMesh):
        raise TypeError(f"mesh must be an oneshot.export.AvatarMesh, got {type(mesh).__name__}")
    if colors and mesh.colors is None:
        raise ValueError("colors=True needs a mesh with vertex colours (exported with colors=True)")
    c2w, intr = cameras.split_label(camera.reshape(-1, 25).double())
    if c2w.shape[0] != 1:
        raise ValueError(f"camera must be one label [1, 25] or [25], got {list(camera.shape)}")
    H, W = cameras.check_resolution(resolution)
    v = torch.from_numpy(np.ascontiguousarray(mesh.vertices, dtype=np.float64))[None]
    f = torch.from_numpy(np.ascontiguousarray(mesh.faces, dtype=np.int64))
    uv, z = cameras.project(v, c2w, intr, (H, W))
    face_index, bary, _ = rasterize_mesh(torch.cat([uv, z[..., None]], -1), f, (H, W))
    normals = vertex_normals(v, f)[0]  # [V, 3]
    view = torch.nn.functional.normalize(v[0] - c2w[0, :3, 3], dim=-1)  # camera -> vertex
    light = ambient + (1 - ambient) * (normals * view).sum(-1).abs()  # [V]
    albedo = (torch.from_numpy(mesh.colors.astype(np.float64)) / 255 if colors
              else torch.full((len(mesh.vertices), 3), 0.82, dtype=torch.float64))
    shade = albedo * light[:, None]  # [V, 3]
    hit = face_index[0] >= 0
    tri = f[face_index[0].clamp(min=0)]  # [H, W, 3]
    img = (bary[0][..., None] * shade[tri]).sum(-2)  # screen-space barycentrics (flat enough at this scale)
    img = torch.where(hit[..., None], img, torch.full_like(img, background))
    return (img.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()
