"""Writing meshes as .glb, .ply or .obj (with trimesh), the world frame and the export settings in the file.

Where the metadata goes:

* ``.glb`` (binary glTF 2.0): the mesh's ``extras`` (JSON) and the scene's ``extras``; glTF's own conventions are
  y up, +z the front of the asset, right-handed, which are oneshot's world axes. glTF assumes metres: the
  ``units`` key says that the coordinates are oneshot world units instead (one unit ≈ 0.37 m of the morphable
  model's metric scale: the mesh is life size after scaling by ``metres_per_unit``).
* ``.ply`` (binary little-endian): ``comment oneshot <key> <JSON value>`` lines in the header.
* ``.obj``: ``# oneshot <key> <JSON value>`` comment lines at the top; vertex colours as the common
  ``v x y z r g b`` extension (Blender, MeshLab and trimesh read it).

:func:`read_metadata` reads the keys back from any of the three. Files are written to a temporary name and
renamed, so a crash never leaves a truncated mesh under the final name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..face3d import BFM_WORLD_SCALE
from .mesh import AvatarMesh, require

__all__ = ["FORMATS", "WORLD_FRAME", "MM_PER_WORLD_UNIT", "save_mesh", "read_metadata", "load_mesh"]

FORMATS = (".glb", ".ply", ".obj")
#: Millimetres per world unit in the morphable model's metric scale: world = 0.27 x Deep3DFaceRecon's BFM
#: decimetres (DESIGN.md §4), so one unit is 100 / 0.27 mm.
MM_PER_WORLD_UNIT = 100.0 / BFM_WORLD_SCALE
#: The frame of every exported mesh (DESIGN.md §2 and §4), written into the files.
WORLD_FRAME = {
    "frame": "oneshot world (EG3D/GOHA): the head near the origin, the tri-plane box [-box_warp/2, box_warp/2]^3",
    "axes": "x right (the subject's left), y up, z out of the face; right-handed",
    "up": "+y",
    "front": "+z",
    "units": "oneshot world units (box_warp = 1), not metres",
    "metres_per_unit": MM_PER_WORLD_UNIT / 1000.0,
    "mm_per_unit": MM_PER_WORLD_UNIT,
    "winding": "counter-clockwise seen from outside (normals outward)",
}
_PREFIX = "oneshot"


def _format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"{path}: unsupported mesh format {suffix or '(no extension)'!r}; use one of "
                         f"{', '.join(FORMATS)}")
    return suffix


def _metadata(mesh: AvatarMesh, extra: dict | None) -> dict:
    meta = {"generator": "oneshot export", **WORLD_FRAME, **mesh.metadata, **(extra or {})}
    json.dumps(meta)  # fail here, with the key in the traceback, on a value JSON cannot hold
    return meta


def _comment_lines(meta: dict, mark: str) -> list[str]:
    return [f"{mark} {_PREFIX} {k} {json.dumps(v, ensure_ascii=True)}" for k, v in meta.items()]


def save_mesh(mesh: AvatarMesh, path, metadata: dict | None = None) -> Path:
    """Write `mesh` to `path` (.glb, .ply or .obj, by its suffix) with the world frame, the mesh's metadata and
    `metadata` (JSON-serialisable values) in the file; parent folders are created. Returns the path."""
    trimesh = require("trimesh")
    path = Path(path)
    fmt = _format(path)
    if not isinstance(mesh, AvatarMesh):
        raise TypeError(f"mesh must be an oneshot.export.AvatarMesh, got {type(mesh).__name__}")
    meta = _metadata(mesh, metadata)
    tm = mesh.to_trimesh()
    tm.metadata = dict(meta)
    if fmt == ".glb":
        scene = trimesh.Scene(tm)
        scene.metadata.update(meta)
        data = scene.export(file_type="glb")
    elif fmt == ".ply":
        raw = tm.export(file_type="ply", encoding="binary")
        head, sep, body = raw.partition(b"end_header\n")
        lines = head.decode("ascii").splitlines()
        at = next(i for i, line in enumerate(lines) if line.startswith("format ")) + 1
        lines[at:at] = _comment_lines(meta, "comment")
        data = ("\n".join(lines) + "\n").encode("ascii") + sep + body
    else:
        text = tm.export(file_type="obj", header=None, include_normals=False)
        data = ("\n".join(_comment_lines(meta, "#")) + "\n" + text).encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return path


def read_metadata(path) -> dict:
    """The ``oneshot`` keys written by :func:`save_mesh` into a .glb, .ply or .obj file ({} when there are none)."""
    path = Path(path)
    fmt = _format(path)
    if not path.is_file():
        raise FileNotFoundError(f"mesh: no such file: {path}")
    if fmt == ".glb":
        trimesh = require("trimesh")
        scene = trimesh.load(path, file_type="glb", force="scene")
        return {k: v for k, v in scene.metadata.items() if k in _keys(scene.metadata)}
    out = {}
    mark = "comment" if fmt == ".ply" else "#"
    with open(path, "rb") as f:
        for raw in f:
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            if fmt == ".ply" and line == "end_header":
                break
            if fmt == ".obj" and not line.startswith("#"):
                break
            parts = line.split(" ", 3)
            if len(parts) == 4 and parts[0] == mark and parts[1] == _PREFIX:
                out[parts[2]] = json.loads(parts[3])
    return out


def _keys(meta: dict) -> list[str]:
    return [k for k in meta if k not in ("file_name", "file_path", "file_type")]


def load_mesh(path) -> AvatarMesh:
    """A mesh file (any format trimesh reads) as an :class:`AvatarMesh` (vertex colours when the file has them;
    several meshes in a scene are concatenated), with the ``oneshot`` metadata of our formats."""
    trimesh = require("trimesh")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mesh: no such file: {path}")
    tm = trimesh.load(path, force="mesh", process=False)
    colors = None
    if getattr(tm.visual, "kind", None) == "vertex":
        colors = np.asarray(tm.visual.vertex_colors)[:, :3].astype(np.uint8)
    meta = read_metadata(path) if path.suffix.lower() in FORMATS else {}
    return AvatarMesh(np.asarray(tm.vertices, dtype=np.float32), np.asarray(tm.faces, dtype=np.int64), colors, meta)
