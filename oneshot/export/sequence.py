"""One mesh per frame of a driving sequence, numbered (``000000.glb``, ``000001.glb``, ...) in a folder, for
animation (Blender's "Stop-motion-OBJ" style importers, or a script that swaps meshes per frame).

Crash safety as ``oneshot animate``'s frames: each mesh is written (to a temporary name, then renamed) as soon as it
is finished, and ``sequence.json`` in the folder records the arguments that decide the meshes. After a crash or a
kill, ``resume=True`` with the same arguments keeps the finished meshes and exports only the missing ones; with
other arguments it refuses (a ValueError naming them) rather than mix two runs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from torch import Tensor

from ..face3d import Coeffs
from .avatar import export_avatar
from .files import FORMATS, save_mesh

if TYPE_CHECKING:  # for the annotations only
    from ..models import Avatar, OneShotAvatar

__all__ = ["MeshSequence", "export_sequence"]

_RECORD = "sequence.json"


class MeshSequence:
    """A folder of numbered meshes, written one finished frame at a time.

    Args:
        folder: where the meshes go (created).
        fmt: ".glb", ".ply" or ".obj".
        record: the JSON-serialisable arguments that decide the meshes (checkpoint, source, driver, resolution,
            level, ...); kept in ``sequence.json``.
        resume: keep the meshes an interrupted run with the same `record` left (refused when it differs);
            without it, existing meshes are overwritten.
        frames: the number of frames (recorded; a resumed run must have the same).
    """

    def __init__(self, folder: str | os.PathLike, fmt: str = ".glb", *, record: dict, resume: bool = False, frames: int):
        self.folder = Path(folder)
        fmt = fmt if fmt.startswith(".") else "." + fmt
        if fmt.lower() not in FORMATS:
            raise ValueError(f"fmt must be one of {', '.join(FORMATS)}, got {fmt!r}")
        if not (isinstance(frames, int) and frames >= 1):
            raise ValueError(f"frames must be an int >= 1, got {frames!r}")
        if self.folder.exists() and not self.folder.is_dir():
            raise ValueError(f"{self.folder} is a file; the mesh sequence needs a folder (created if missing)")
        self.fmt, self.frames = fmt.lower(), frames
        self.record = {**json.loads(json.dumps(record)), "format": self.fmt, "frames": frames}
        path = self.folder / _RECORD
        if resume and path.is_file():
            try:
                old = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                old = {}
            diff = sorted(k for k in set(old) | set(self.record) if old.get(k) != self.record.get(k))
            if diff:
                raise ValueError(f"resume: the meshes in {self.folder}/ were exported with other arguments "
                                 f"(different: {', '.join(diff)}); run without resume to start over")
        self.resume = resume
        self.folder.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.record, indent=1) + "\n")

    def path(self, i: int) -> Path:
        """The file of frame `i`."""
        return self.folder / f"{i:06d}{self.fmt}"

    def done(self, i: int) -> bool:
        """Whether frame `i` is finished and kept (only when resuming)."""
        return self.resume and self.path(i).is_file()

    def missing(self) -> list[int]:
        """The frames still to export."""
        return [i for i in range(self.frames) if not self.done(i)]


def export_sequence(model: OneShotAvatar, avatar: Avatar, coeffs: Coeffs, camera: Tensor | None, sequence: MeshSequence, *,
                    start: int = 0, progress: bool = False, on_frame: Callable | None = None,
                    **mesh_kwargs: object) -> list[Path]:
    """Export frames ``start .. start + N - 1`` of `sequence`: `avatar` with the expression of each of the N
    coefficients and (when `camera` is given) the head pose of each camera; frames already done (resume) are
    skipped.

    Args:
        model: the :class:`~oneshot.models.OneShotAvatar` that reconstructed `avatar`.
        avatar: an :class:`~oneshot.models.Avatar` of batch 1.
        coeffs: :class:`~oneshot.face3d.Coeffs` [N] of the driving frames.
        camera: [N, 25] camera labels of the driving frames (the head poses), or None (canonical pose).
        sequence: the :class:`MeshSequence` to fill.
        on_frame: called as ``on_frame(i, path, mesh)`` after each mesh is written.
        **mesh_kwargs: resolution, level, min_piece, colors, chunk, max_bytes (see
            :func:`~oneshot.export.extract_mesh`).

    Returns:
        the paths of the N frames (written now or earlier).
    """
    from .._progress import progress_bar

    if not isinstance(coeffs, Coeffs):
        raise TypeError(f"coeffs must be oneshot.face3d.Coeffs, got {type(coeffs).__name__}")
    N = coeffs.batch_size
    if camera is not None and (not isinstance(camera, Tensor) or camera.shape != (N, 25)):
        got = list(camera.shape) if isinstance(camera, Tensor) else type(camera).__name__
        raise ValueError(f"camera must be [N, 25] with N = {N} (one per coefficient row), or None, got {got}")
    if not (0 <= start and start + N <= sequence.frames):
        raise ValueError(f"frames {start} .. {start + N - 1} do not fit the sequence's {sequence.frames} frames")
    paths = []
    with progress_bar(N, desc="export", unit="mesh", enabled=progress) as bar:
        for k in range(N):
            i = start + k
            path = sequence.path(i)
            if not sequence.done(i):
                one = Coeffs(*(getattr(coeffs, f)[k:k + 1] for f in ("identity", "expression", "albedo", "lighting",
                                                                     "rotation", "translation")), model=coeffs.model)
                mesh = export_avatar(model, avatar, coeffs=one, camera=None if camera is None else camera[k:k + 1],
                                     **mesh_kwargs)
                save_mesh(mesh, path, {"frame_index": i})
                if on_frame is not None:
                    on_frame(i, path, mesh)
            paths.append(path)
            bar.update(1)
    return paths


