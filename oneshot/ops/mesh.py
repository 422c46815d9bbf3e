"""rasterize_mesh: which triangle covers each pixel centre, with screen-space barycentrics and view depth."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _extension
from . import reference
from ._backend import op_exists, resolve_backend
from ._common import check_resolution, check_tensor, shape_of

__all__ = ["rasterize_mesh"]


def rasterize_mesh(vertices: Tensor, faces: Tensor, resolution, *, backend: str | None = None
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """Rasterize triangle meshes at the pixel centres (no gradient).

    vertices are in pixel coordinates: x to the right, y down, pixel (i, j) centred at (j + 0.5, i + 0.5), and z
    the positive view depth (for a perspective camera, what :func:`oneshot.cameras.project` returns). A pixel
    centre belongs to a triangle when it lies inside, or on an edge the triangle owns: triangles of either
    winding are normalised to positive area (clockwise on screen) and own their top and left edges (the top-left
    rule), so a centre on an edge (or vertex) shared by neighbouring triangles belongs to exactly one of them. No
    back-face culling; degenerate triangles and triangles with a vertex at z <= 0 or non-finite are skipped. The
    nearest triangle wins (depth = 1 / sum_k(b_k / z_k), perspective-correct), equal depths go to the lower face
    index. All decisions use the pinned double arithmetic of csrc/mesh/mesh.h, so every backend agrees exactly.

    Args:
        vertices: [B, V, 3] float32 or float64.
        faces: [F, 3] int32 or int64 vertex indices, shared by the batch.
        resolution (int | tuple[int, int]): H = W as an int, or an (H, W) pair.
        backend: None/"auto", "reference" or "native".

    Returns:
        face_index [B, H, W] int64 (-1 where no triangle covers the centre), bary [B, H, W, 3] screen-space
        barycentrics of the centre in the face's vertex order (0 where empty), depth [B, H, W] (inf where
        empty); bary and depth in the dtype of vertices.
    """
    check_tensor("vertices", vertices, "[B, V, 3]", 3)
    if vertices.shape[2] != 3:
        raise ValueError(f"vertices must be [B, V, 3], got {shape_of(vertices)}")
    if not isinstance(faces, Tensor):
        raise TypeError(f"faces must be an int tensor [F, 3], got {type(faces).__name__}")
    if faces.dim() != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces must be [F, 3], got {shape_of(faces)}")
    if faces.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"faces must be int32 or int64, got {faces.dtype}")
    if faces.device != vertices.device:
        raise ValueError(f"faces must be on the device of vertices ({vertices.device}), got {faces.device}")
    if faces.numel() and not torch.compiler.is_compiling():
        lo, hi = int(faces.min()), int(faces.max())
        if lo < 0 or hi >= vertices.shape[1]:
            raise ValueError(f"faces must index vertices 0 .. {vertices.shape[1] - 1}, got indices {lo} .. {hi}")
    H, W = check_resolution(resolution)
    vertices = vertices.detach()  # no gradient through coverage
    impl = resolve_backend(backend, "rasterize_mesh", vertices.device, vertices.dtype)
    if impl == "reference":
        return reference.rasterize_mesh(vertices, faces, (H, W))
    return torch.ops.oneshot.rasterize_mesh(vertices, faces, H, W)


def _register() -> None:
    @torch.library.register_fake("oneshot::rasterize_mesh")
    def _fake(vertices, faces, height, width):
        B = vertices.shape[0]
        return (vertices.new_empty((B, height, width), dtype=torch.long), vertices.new_empty((B, height, width, 3)),
                vertices.new_empty((B, height, width)))


if _extension.status().loaded and op_exists("rasterize_mesh"):  # (an extension older than this op lacks it)
    _register()
