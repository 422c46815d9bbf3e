"""The avatar as a 3D asset: its density sampled on a grid inside the tri-plane box through oneshot's ops
(chunked), the iso-surface by marching cubes (scikit-image), vertex colours from the decoder, small pieces
removed, written as .glb / .ply / .obj (trimesh) in oneshot's world frame; one mesh per driving frame for
animation.

    from oneshot.export import export_avatar, save_mesh
    avatar = model.reconstruct(image, camera, coeffs)
    save_mesh(export_avatar(model, avatar, resolution=256), "head.glb")

Needs the ``export`` extra (scikit-image, trimesh). See docs/export.md.
"""

from .avatar import export_avatar, head_pose, neutral_expression
from .files import FORMATS, MM_PER_WORLD_UNIT, WORLD_FRAME, load_mesh, read_metadata, save_mesh
from .grid import (DEFAULT_CHUNK, GridTooLargeError, available_memory, density_grid, grid_bytes, grid_points,
                   sample_colors)
from .mesh import (DEFAULT_LEVEL, DEFAULT_MIN_PIECE, AvatarMesh, ExportUnavailableError, NoSurfaceError, extract_mesh,
                   extract_meshes, iso_surface, remove_small_pieces)
from .preview import render_mesh
from .sequence import MeshSequence, export_sequence

__all__ = ["export_avatar", "head_pose", "neutral_expression", "extract_mesh", "extract_meshes", "iso_surface",
           "remove_small_pieces",
           "density_grid", "sample_colors", "grid_points", "grid_bytes", "available_memory", "save_mesh",
           "load_mesh", "read_metadata", "AvatarMesh", "MeshSequence", "export_sequence", "GridTooLargeError",
           "NoSurfaceError", "ExportUnavailableError", "DEFAULT_LEVEL", "DEFAULT_MIN_PIECE", "DEFAULT_CHUNK",
           "FORMATS", "WORLD_FRAME", "MM_PER_WORLD_UNIT", "render_mesh"]
