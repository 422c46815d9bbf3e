"""Landmarks through a video: the face front end's tracking (frames without a face hold a neighbour's points), the
one-euro smoothing of the result with speeds measured in the face's own size, and the jitter that smoothing removes.
Tracking needs the ``faces`` extra (:mod:`oneshot.face3d.detect`)."""

from __future__ import annotations

import torch
from torch import Tensor

from .smooth import jitter, smooth_sequence

__all__ = ["track_landmarks", "smooth_landmarks", "landmark_jitter", "interocular", "SMOOTH_MIN_CUTOFF",
           "SMOOTH_BETA"]

#: One-euro settings for driving landmarks, in inter-ocular distances (see oneshot.face3d.smooth): a still face is
#: smoothed at 2 Hz, the cut-off rises by 20 Hz per inter-ocular distance per second of motion. Chosen on 4-second
#: videos of the two portraits under a known smooth motion (noise and H.264 added): the tracker's frame-to-frame
#: jitter about the true path drops by 38-48% for 0.06-0.13 px more RMS distance from it (lag).
SMOOTH_MIN_CUTOFF, SMOOTH_BETA = 2.0, 20.0


def track_landmarks(frames, *, front=None, progress: bool = False, log=None) -> Tensor:
    """The 68 landmarks [N, 68, 2] of the largest face in every frame of `frames` (an iterable of uint8 RGB
    [H, W, 3] frames with ``len``), tracked with the face front end; a frame without a face holds its neighbour's
    landmarks (the previous frame's; the first found one before it).

    Args:
        frames (Sized & Iterable[numpy.ndarray]): uint8 RGB [H, W, 3] frames, e.g. a video reader.
        front (FaceFrontEnd | None): a :class:`~oneshot.face3d.FaceFrontEnd` made with ``video=True`` (default:
            one is made and closed here; :class:`~oneshot.face3d.FacesUnavailableError` when the ``faces`` extra is
            missing).
        progress: a progress bar (tqdm, on stderr).
        log (Callable[[str], None] | None): called with one line naming the frames that had no face (default:
            nothing is said).

    Raises ValueError when no frame has a face.
    """
    from .._progress import progress_bar
    from .detect import FaceFrontEnd

    own = front is None
    front = FaceFrontEnd(video=True) if own else front
    out, missing = [], []
    try:
        with progress_bar(len(frames), desc="track", unit="frame", enabled=progress) as bar:
            for i, f in enumerate(frames):
                faces = front(f)
                out.append(faces[0].landmarks if faces else None)
                if not faces:
                    missing.append(i)
                bar.update(1)
    finally:
        if own:
            front.close()
    found = [x for x in out if x is not None]
    if not found:
        raise ValueError(f"{getattr(frames, 'path', 'driving')}: no face found in any of its {len(out)} frames")
    last = found[0]
    for i, x in enumerate(out):
        out[i] = last = x if x is not None else last
    if missing and log is not None:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        log(f"no face in {len(missing)} of {len(out)} frames ({shown}): they hold a neighbour's landmarks")
    return torch.stack(out).float()


def interocular(landmarks: Tensor) -> Tensor:
    """[N] inter-ocular distances (between the eye centres) of iBUG landmarks [N, 68, 2]."""
    return (landmarks[:, 36:42].mean(1) - landmarks[:, 42:48].mean(1)).norm(dim=-1)


def smooth_landmarks(landmarks: Tensor, fps: float, *, min_cutoff: float = SMOOTH_MIN_CUTOFF,
                     beta: float = SMOOTH_BETA) -> Tensor:
    """iBUG landmarks [N, 68, 2] of a video at `fps`, one-euro filtered; speeds are measured in the face's
    inter-ocular distance, so the settings hold at any image size."""
    return smooth_sequence(landmarks, fps, scale=interocular(landmarks).double(), min_cutoff=min_cutoff, beta=beta)


def landmark_jitter(landmarks: Tensor) -> Tensor:
    """The frame-to-frame jitter of iBUG landmarks [N, 68, 2] in inter-ocular distances (see
    :func:`oneshot.face3d.smooth.jitter`)."""
    return jitter(landmarks / interocular(landmarks).mean())
