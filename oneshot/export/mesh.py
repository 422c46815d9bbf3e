"""Tri-planes -> a coloured triangle mesh: the density on a grid (:mod:`oneshot.export.grid`), its iso-surface by
scikit-image's marching cubes (Lewiner's), small disconnected pieces removed, and vertex colours from the
decoder's colour features at the vertices.

Needs the ``export`` extra (scikit-image, trimesh): ``pip install 'oneshot-avatar[export]'``; without it the functions
raise :class:`ExportUnavailableError`, which says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from ..ops import PLANE_AXES_GOHA
from .grid import DEFAULT_CHUNK, density_grid, finite_or_raise, sample_colors, voxel_size

__all__ = ["AvatarMesh", "ExportUnavailableError", "NoSurfaceError", "DEFAULT_LEVEL", "DEFAULT_MIN_PIECE",
           "extract_mesh", "extract_meshes", "iso_surface", "remove_small_pieces", "require"]

#: The iso level on the decoder's raw σ: EG3D's and Portrait4D's shape extraction (``level=10``). The renderer's
#: density there is softplus(10 - 1) = 9 per world unit: a ray loses half its light within 0.08 of the surface.
DEFAULT_LEVEL = 10.0
#: Connected pieces with fewer faces than this fraction of the largest piece's are removed (floaters).
DEFAULT_MIN_PIECE = 0.05


class ExportUnavailableError(ImportError):
    """scikit-image or trimesh (the ``export`` extra) is not installed."""


class NoSurfaceError(ValueError):
    """The density never crosses the iso level inside the box: there is no surface to extract."""


def require(*modules: str):
    """Import the ``export`` extra's `modules` (e.g. "skimage.measure", "trimesh"), or raise
    :class:`ExportUnavailableError` naming what to install."""
    import importlib

    out = []
    for name in modules:
        try:
            out.append(importlib.import_module(name))
        except ImportError as e:
            dist = {"skimage": "scikit-image"}.get(name.split(".")[0], name.split(".")[0])
            raise ExportUnavailableError(f"mesh export needs {dist} ({e}): pip install 'oneshot-avatar[export]' (scikit-image, "
                                         f"scipy and trimesh)") from None
    return out[0] if len(out) == 1 else out


@dataclass
class AvatarMesh:
    """A triangle mesh in oneshot's world frame (DESIGN.md §2: x right, y up, z out of the face; the tri-plane box
    [-box_warp/2, box_warp/2]^3), triangles counter-clockwise seen from outside (normals outward).

    vertices: [V, 3] float32 world coordinates; faces: [F, 3] int64 vertex indices; colors: [V, 3] uint8 RGB or
    None; metadata: what is written into the file (level, resolution, frame, ...)."""

    vertices: np.ndarray
    faces: np.ndarray
    colors: np.ndarray | None = None
    metadata: dict = field(default_factory=dict)

    @property
    def num_vertices(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])

    def transformed(self, matrix) -> AvatarMesh:
        """This mesh moved by a rigid 4 x 4 transform [4, 4] (array or tensor) applied to the vertices."""
        m = np.asarray(matrix.detach().cpu() if isinstance(matrix, Tensor) else matrix, dtype=np.float64)
        if m.shape != (4, 4):
            raise ValueError(f"matrix must be [4, 4], got {list(m.shape)}")
        v = self.vertices.astype(np.float64) @ m[:3, :3].T + m[:3, 3]
        faces = self.faces if np.linalg.det(m[:3, :3]) > 0 else self.faces[:, ::-1].copy()  # keep outward normals
        return AvatarMesh(v.astype(np.float32), faces, self.colors, dict(self.metadata))

    def to_trimesh(self):
        """A ``trimesh.Trimesh`` (vertex colours as RGBA; the metadata in ``.metadata``)."""
        trimesh = require("trimesh")
        colors = None
        if self.colors is not None:
            colors = np.concatenate([self.colors, np.full((len(self.colors), 1), 255, np.uint8)], 1)
        return trimesh.Trimesh(self.vertices, self.faces, vertex_colors=colors, process=False,
                               metadata=dict(self.metadata))


def iso_surface(grid: np.ndarray, level: float, *, box_warp: float = 1.0, resolution: int | None = None,
                padded: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Marching cubes (scikit-image's Lewiner) on a density grid of :func:`~oneshot.export.grid.density_grid`,
    the inside where density > `level`.

    Args:
        grid: float32 [R, R, R], or [R + 2]^3 with `padded` (one border voxel on every side).
        level: the iso level (finite).
        resolution: R (default: from the grid's shape).

    Returns:
        vertices [V, 3] float32 world coordinates, faces [F, 3] int64 (counter-clockwise seen from outside).
        :class:`NoSurfaceError` when the density never crosses `level`.
    """
    measure = require("skimage.measure")
    level = float(level)
    if not np.isfinite(level):
        raise ValueError(f"level must be a finite number, got {level}")
    p = 1 if padded else 0
    inner = grid[p:grid.shape[0] - p, p:grid.shape[1] - p, p:grid.shape[2] - p]
    finite_or_raise(inner)
    lo, hi = float(inner.min()), float(inner.max())
    if not (lo < level < hi):  # (a level below everything would give the box itself)
        raise NoSurfaceError(f"no surface at level {level:g}: the density on the grid ranges from {lo:.4g} to "
                             f"{hi:.4g}; pick a level inside that range (the avatar may be untrained, or empty "
                             f"in the box)")
    R = grid.shape[0] - 2 * p if resolution is None else int(resolution)
    # gradient_direction="ascent": the inside is denser than the outside; then the faces come out wound
    # counter-clockwise seen from outside, in (x, y, z) index order
    verts, faces, _, _ = measure.marching_cubes(grid, level, gradient_direction="ascent", method="lewiner")
    step = voxel_size(R, box_warp)
    verts = (verts.astype(np.float64) - p) * step - box_warp / 2
    return verts.astype(np.float32), faces.astype(np.int64)


def remove_small_pieces(vertices: np.ndarray, faces: np.ndarray, min_piece: float = DEFAULT_MIN_PIECE
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Drop the connected pieces (triangles joined through shared vertices; scipy's connected components of the
    vertex graph) with fewer faces than `min_piece` x the largest piece's (0: keep everything; 1: only the
    largest piece and its equals).

    Args:
        vertices: [V, 3]; faces: [F, 3] int.

    Returns:
        (vertices [V', 3], faces [F', 3] reindexed, kept [V] bool: which input vertices remain).
    """
    sparse, csgraph = require("scipy.sparse", "scipy.sparse.csgraph")
    if not (0.0 <= float(min_piece) <= 1.0):
        raise ValueError(f"min_piece must be in [0, 1] (a fraction of the largest piece's faces), got {min_piece}")
    keep_all = np.ones(len(vertices), dtype=bool)
    if len(faces) == 0 or min_piece == 0:
        return vertices, faces, keep_all
    n = len(vertices)
    edges = sparse.coo_matrix((np.ones(2 * len(faces), np.int8),
                               (np.concatenate([faces[:, 0], faces[:, 1]]), np.concatenate([faces[:, 1], faces[:, 2]]))),
                              shape=(n, n))
    count, labels = csgraph.connected_components(edges, directed=False)
    face_label = labels[faces[:, 0]]
    sizes = np.bincount(face_label, minlength=count)
    face_keep = (sizes >= float(min_piece) * sizes.max())[face_label]
    used = np.zeros(n, dtype=bool)
    used[faces[face_keep].reshape(-1)] = True
    new_index = np.cumsum(used) - 1
    return vertices[used], new_index[faces[face_keep]].astype(np.int64), used


@torch.no_grad()
def extract_mesh(planes: Tensor, decoder: nn.Module, *, resolution: int = 256, level: float = DEFAULT_LEVEL,
                 box_warp: float = 1.0, axes: tuple = PLANE_AXES_GOHA, min_piece: float = DEFAULT_MIN_PIECE,
                 colors: bool = True, chunk: int = DEFAULT_CHUNK, backend: str | None = None,
                 max_bytes: int | None = None, progress: bool = False) -> AvatarMesh:
    """The iso-surface of one avatar's tri-planes as a coloured mesh.

    Args:
        planes: [1, 3, C, H, W] tri-planes (T = T_c + T_e + T_a for an avatar; see
            :meth:`oneshot.models.OneShotAvatar.planes`).
        decoder: the avatar's :class:`~oneshot.models.TriplaneDecoder` (or a module with its interface).
        resolution: grid points per axis over the box (voxel side box_warp / (resolution - 1)).
        level: the iso level on the decoder's raw σ (default :data:`DEFAULT_LEVEL`, EG3D's).
        min_piece: pieces smaller than this fraction of the largest are removed (:func:`remove_small_pieces`).
        colors: sample the decoder's RGB at the vertices (else the mesh has no colours).
        box_warp: the tri-planes' box side.
        axes: the planes' axes.
        chunk: grid points per pass (as :func:`~oneshot.export.grid.density_grid`, as are the next three).
        backend: backend of ``triplane_sample``.
        max_bytes: the memory it may use.
        progress: a progress bar on stderr.

    Returns:
        an :class:`AvatarMesh` in the world frame. Errors: :class:`NoSurfaceError` (the density never crosses
        `level`), :class:`~oneshot.export.grid.GridTooLargeError` (before allocating), ValueError for bad
        arguments, :class:`ExportUnavailableError` without the ``export`` extra.
    """
    return extract_meshes(planes, decoder, [level], resolution=resolution, box_warp=box_warp, axes=axes,
                          min_piece=min_piece, colors=colors, chunk=chunk, backend=backend, max_bytes=max_bytes,
                          progress=progress, missing="raise")[0]


@torch.no_grad()
def extract_meshes(planes: Tensor, decoder: nn.Module, levels: Sequence[float], *, resolution: int = 256,
                   box_warp: float = 1.0, axes: tuple = PLANE_AXES_GOHA, min_piece: float = DEFAULT_MIN_PIECE, colors: bool = True,
                   chunk: int = DEFAULT_CHUNK, backend: str | None = None, max_bytes: int | None = None,
                   progress: bool = False, missing: str = "none") -> list[AvatarMesh | None]:
    """:func:`extract_mesh` at several iso levels from one density grid (sampled once); the other arguments as
    :func:`extract_mesh`'s.

    Args:
        levels: a sequence of finite iso levels.
        missing: what a level without a surface gives: "none" (None in its place) or "raise"
            (:class:`NoSurfaceError`).

    Returns:
        one :class:`AvatarMesh` (or None) per level, in order.
    """
    require("skimage.measure", "scipy.sparse.csgraph", "trimesh")  # before the (long) sampling
    try:
        levels = [float(x) for x in levels]
    except (TypeError, ValueError):
        raise ValueError(f"levels must be a sequence of numbers, got {levels!r}") from None
    if not levels or not all(np.isfinite(levels)):
        bad = levels[0] if len(levels) == 1 else levels
        raise ValueError(f"level must be a finite number, got {bad}")
    if not (0.0 <= float(min_piece) <= 1.0):
        raise ValueError(f"min_piece must be in [0, 1] (a fraction of the largest piece's faces), got {min_piece}")
    if missing not in ("none", "raise"):
        raise ValueError(f"missing must be 'none' or 'raise', got {missing!r}")
    # the border: far below every level, so a surface cut by the box is closed by a cap on the box's face (marching
    # cubes puts the cap's vertices on the face, to float32 rounding: within 1e-4 voxels)
    below = np.float32(min(levels) - 1e6)
    grid = density_grid(planes, decoder, resolution, box_warp=box_warp, axes=axes, chunk=chunk, backend=backend,
                        max_bytes=max_bytes, pad=float(below), progress=progress)
    out = []
    for level in levels:
        try:
            verts, faces = iso_surface(grid, level, box_warp=box_warp, resolution=resolution, padded=True)
        except NoSurfaceError:
            if missing == "raise":
                raise
            out.append(None)
            continue
        verts, faces, _ = remove_small_pieces(verts, faces, min_piece)
        rgb = None
        if colors and len(verts):
            c = sample_colors(planes, decoder, torch.from_numpy(verts).to(planes.device), box_warp=box_warp,
                              axes=axes, chunk=chunk, backend=backend)
            rgb = (c.cpu().numpy() * 255 + 0.5).astype(np.uint8)
        meta = {"level": level, "resolution": int(resolution), "voxel": voxel_size(resolution, box_warp),
                "box_warp": float(box_warp), "min_piece": float(min_piece)}
        out.append(AvatarMesh(verts, faces, rgb, meta))
    return out
