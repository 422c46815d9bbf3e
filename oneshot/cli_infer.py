"""``oneshot reconstruct`` and ``oneshot animate``: a trained avatar from one portrait, shown on a novel-view orbit
or driven by a video.

    oneshot reconstruct --checkpoint CKPT SOURCE --out DIR [--landmarks FILE] [--matte PNG | --no-matte]
                        [--face-model PATH] [--recon EPOCH_20.pth] [--frames 48] [--batch 8] [--fps 24]
                        [--save-frames] [--no-sr] [--seed 0] [--device cpu|cuda] [--quiet]
    oneshot animate --checkpoint CKPT SOURCE DRIVING --out OUT.mp4 [--landmarks FILE] [--driving-landmarks FILE]
                    [--matte PNG | --no-matte] [--no-smooth] [--face-model PATH] [--recon PTH] [--relative-pose]
                    [--batch 8] [--fps] [--no-compare] [--keep-frames] [--resume] [--no-sr] [--seed 0] [--device]
                    [--quiet]

Faces: with the ``faces`` extra installed (``pip install 'oneshot[faces]'``, MediaPipe's models inside the
wheel), nothing else is needed: the source's landmarks and matte and every driving frame's landmarks are found
by :mod:`oneshot.face3d.detect` (driving frames are tracked, not detected from scratch each frame). Files still
take precedence when given. Landmarks are pixel coordinates of the image they belong to, x right, y down, the
top-left pixel's centre at (0.5, 0.5) (add 0.5 to coordinates of detectors that put it at (0, 0)): the 68 iBUG
points, MediaPipe's 478 (or 468) Face Mesh points (mapped to the 68 by :mod:`oneshot.face3d.mediapipe68`), or 5
(eye centres, nose tip, mouth corners) with ``--recon``. They are needed with ``--recon`` too: the crop (the
avatar's and the regressor's) is aligned on them.

* one image (``--landmarks``): JSON ``{"landmarks": [[x, y], ...]}`` (or the bare list), ``.npy`` [K, 2] or a
  ``.txt`` with one ``x y`` (or ``x,y``) line per point; a third column (depth, confidence) is ignored;
* a driving sequence (``--driving-landmarks``): JSON ``{"frames": [[[x, y], ...], ...]}`` or ``.npy`` [N, K, 2],
  one entry per driving frame (N must be the number of frames); one frame may also be given as for an image.

The model wants the background removed (GOHA multiplies its images by a matte; the background becomes black).
``--matte`` takes an 8-bit matte of the source (255 = head); else an RGBA source's alpha is used; else, with the
``faces`` extra, MediaPipe's selfie segmentation makes one (``--no-matte`` keeps the background, which the model
was not trained on). Driving frames need no matte: only their landmarks (and, with ``--recon``, the regressor,
which was trained on unmatted images) are used. A driving video's landmarks are smoothed over time with a
one-euro filter (:mod:`oneshot.face3d.smooth`; ``--no-smooth`` turns it off), which removes the detector's
frame-to-frame jitter from the expression and pose.

Crash safety of ``animate``: every finished frame is written at once as a PNG into ``<OUT stem>_frames/`` next to
OUT, and streamed into ``<OUT stem>.partial.mp4`` (and ``<stem>_compare.partial.mp4``), which are closed properly
on any exception (Ctrl-C included), so they stay playable. Only after the last frame are they renamed to OUT
(and ``<stem>_compare.mp4``) and the PNGs removed (``--keep-frames`` keeps them). After a crash, or a kill, the
same command with ``--resume`` reuses the PNGs and renders only the missing frames.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

__all__ = ["add_parsers", "reconstruct_command", "animate_command", "load_landmarks", "load_landmark_frames",
           "track_landmarks", "smooth_landmarks", "landmark_jitter",
           "relative_cameras", "depth_images"]

_LANDMARK_FORMATS = ('JSON {"landmarks": [[x, y], ...]}, .npy [K, 2] or .txt (one "x y" line per point), '
                     "K = 68 iBUG points, 478 (or 468) MediaPipe Face Mesh points, or 5 with --recon")
_FRAME_LANDMARK_FORMATS = 'JSON {"frames": [[[x, y], ...], ...]} or .npy [N, K, 2], one entry per driving frame'


# -- inputs ---------------------------------------------------------------------------------------------------

def _check_points(a, path: Path, frames: bool):
    """float64 [K, 2] (or [N, K, 2] for `frames`) of landmarks read from `path`, checked; MediaPipe's 478 (or
    468) Face Mesh points become the 68 iBUG points."""
    import numpy as np

    from .face3d.mediapipe68 import ibug68_from_mediapipe

    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 + frames or a.shape[-2] not in (5, 68, 468, 478) or a.shape[-1] not in (2, 3) or a.shape[0] == 0:
        want = "[N, K, 2]" if frames else "[K, 2]"
        raise ValueError(f"{path}: landmarks must be {want} with K = 68 (iBUG), 478 or 468 (MediaPipe Face Mesh, "
                         f"converted to the 68) or 5, got {list(a.shape)}")
    if not np.isfinite(a).all():
        raise ValueError(f"{path}: landmarks must be finite numbers")
    a = a[..., :2]
    return ibug68_from_mediapipe(a) if a.shape[-2] in (468, 478) else a


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON file ({e})") from None


def _read_npy(path: Path):
    import numpy as np

    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable .npy file ({e})") from None


def _ragged(path: Path, e: Exception):
    return ValueError(f"{path}: landmarks must be lists of [x, y] numbers of one length ({e})")


def load_landmarks(path):
    """The landmarks of one image from `path` as float32 [K, 2] pixels (K = 68 or 5; MediaPipe's 478 are mapped
    to the 68): JSON
    ``{"landmarks": [[x, y], ...]}`` (or the bare list), ``.npy`` [K, 2] (or [1, K, 2]) or ``.txt``/``.csv``
    with one ``x y`` or ``x,y`` line per point. A third column is dropped."""
    import numpy as np
    import torch

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"landmarks: no such file: {p}")
    suffix = p.suffix.lower()
    if suffix == ".json":
        data = _read_json(p)
        if isinstance(data, dict):
            if "landmarks" not in data:
                raise ValueError(f'{p}: expected {{"landmarks": [[x, y], ...]}}, got keys {sorted(data)}')
            data = data["landmarks"]
        try:
            a = np.asarray(data, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise _ragged(p, e) from None
    elif suffix == ".npy":
        a = _read_npy(p)
    elif suffix in (".txt", ".csv"):
        try:
            a = np.loadtxt(p.read_text().replace(",", " ").splitlines(), ndmin=2)
        except (OSError, ValueError) as e:
            raise ValueError(f"{p}: not a table of numbers, one 'x y' line per landmark ({e})") from None
    else:
        raise ValueError(f"{p}: unsupported landmark file {suffix or '(no extension)'!r}; expected {_LANDMARK_FORMATS}")
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    return torch.from_numpy(_check_points(a, p, False).copy()).float()


def load_landmark_frames(path):
    """Per-frame landmarks from `path` as float32 [N, K, 2] pixels: JSON ``{"frames": [[[x, y], ...], ...]}``
    or ``.npy`` [N, K, 2]; a single frame may also be given in :func:`load_landmarks`' formats."""
    import numpy as np
    import torch

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"driving landmarks: no such file: {p}")
    suffix = p.suffix.lower()
    if suffix == ".json":
        data = _read_json(p)
        if isinstance(data, dict) and "frames" in data:
            try:
                a = np.asarray(data["frames"], dtype=np.float64)
            except (TypeError, ValueError) as e:
                raise _ragged(p, e) from None
            if a.ndim == 1 and a.shape[0] == 0:
                raise ValueError(f"{p}: 'frames' is empty")
        elif isinstance(data, dict) and "landmarks" in data or isinstance(data, list):
            return load_landmarks(p)[None]
        else:
            raise ValueError(f'{p}: expected {{"frames": [[[x, y], ...], ...]}}, got keys '
                             f"{sorted(data) if isinstance(data, dict) else type(data).__name__}")
    elif suffix == ".npy":
        a = _read_npy(p)
        if a.ndim == 2:
            a = a[None]
    elif suffix in (".txt", ".csv"):
        return load_landmarks(p)[None]
    else:
        raise ValueError(f"{p}: unsupported landmark file {suffix or '(no extension)'!r}; expected "
                         f"{_FRAME_LANDMARK_FORMATS}")
    return torch.from_numpy(_check_points(a, p, True).copy()).float()


def _check_landmark_count(lm, path, recon) -> None:
    if lm.shape[-2] == 5 and recon is None:
        raise ValueError(f"{path}: 5 landmarks only align the face; fitting the morphable model needs the 68 iBUG "
                         f"points (or pass --recon to regress the coefficients)")


def _check_inside(lm, width: int, height: int, what: str) -> None:
    """Refuse landmarks whose centre lies outside the image (normalised coordinates, another image's points)."""
    c = lm.reshape(-1, lm.shape[-2], 2).mean(1)  # [N, 2]
    bad = ((c[:, 0] < 0) | (c[:, 0] > width) | (c[:, 1] < 0) | (c[:, 1] > height)).nonzero()
    if len(bad):
        i = int(bad[0])
        where = f" (frame {i})" if lm.dim() == 3 else ""
        raise ValueError(f"{what}{where}: the landmarks' centre ({float(c[i, 0]):.1f}, {float(c[i, 1]):.1f}) lies "
                         f"outside the {width} x {height} image; landmarks are pixel coordinates of that image")
    spread = lm.reshape(-1, lm.shape[-2], 2).std(1).amin()
    if float(spread) < 1.0:
        raise ValueError(f"{what}: the landmarks span less than a pixel; they must be pixel coordinates (not "
                         f"normalised to [0, 1])")


def _read_matte(path, size: tuple[int, int]):
    """An 8-bit matte (grey; RGBA/LA: its alpha) as float [1, 1, H, W] in [0, 1]."""
    import numpy as np
    import torch
    from PIL import Image

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"matte: no such file: {p}")
    try:
        with Image.open(p) as im:
            if im.mode in ("RGBA", "LA", "PA"):
                a = np.asarray(im.getchannel("A"), dtype=np.float32) / 255
            elif im.mode.startswith("I"):
                a = np.asarray(im, dtype=np.float32) / 65535
            else:
                a = np.asarray(im.convert("L"), dtype=np.float32) / 255
    except Exception as e:  # noqa: BLE001 - pillow raises several types
        raise ValueError(f"{p}: not a readable matte image ({e})") from None
    if (a.shape[1], a.shape[0]) != size:
        raise ValueError(f"{p}: the matte is {a.shape[1]} x {a.shape[0]}, the source {size[0]} x {size[1]}")
    return torch.from_numpy(np.clip(a, 0, 1))[None, None]


def _front_end(why: str, video: bool = False):
    """A :class:`~oneshot.face3d.detect.FaceFrontEnd`, or a ValueError saying what to install or pass instead."""
    from .face3d.detect import FaceFrontEnd, FacesUnavailableError

    try:
        return FaceFrontEnd(video=video)
    except FacesUnavailableError as e:
        raise ValueError(f"{why}: {e}") from None


def _detect_one(front, rgb, path, what: str = "source"):
    """The 68 landmarks [68, 2] of the largest face in uint8 `rgb`, and a note (faces found)."""
    faces = front(rgb)
    if not faces:
        raise ValueError(f"{path}: no face found in the {what} image (pass --landmarks FILE if there is one)")
    note = f"{len(faces)} faces found, using the largest" if len(faces) > 1 else "face detected"
    return faces[0].landmarks, note


def _read_source(path, matte_path, no_matte: bool = False, front=None):
    """The source portrait as float [1, 3, H, W] in [0, 1], matted; a note on the matte used; the uint8 RGB."""
    import numpy as np
    import torch
    from PIL import Image

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"source image: no such file: {p}")
    try:
        with Image.open(p) as im:
            alpha = np.asarray(im.getchannel("A"), dtype=np.float32) / 255 if im.mode in ("RGBA", "LA") else None
            rgb8 = np.asarray(im.convert("RGB"))
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{p}: not a readable image ({e})") from None
    image = torch.from_numpy(rgb8.astype(np.float32) / 255).permute(2, 0, 1)[None].contiguous()
    if no_matte:
        return image, "no matte (--no-matte): background kept", rgb8
    if matte_path is not None:
        return image * _read_matte(matte_path, (rgb8.shape[1], rgb8.shape[0])), f"matte {matte_path}", rgb8
    if alpha is not None:
        return image * torch.from_numpy(alpha)[None, None], "the source's alpha channel as matte", rgb8
    if front is not None:
        return image * front.matte(rgb8)[None, None], "matte from MediaPipe's selfie segmentation", rgb8
    return image, "no matte: background kept (pass --matte, or install oneshot[faces] for one)", rgb8


def _device(name):
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device must be cpu, cuda or cuda:N, got {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: this torch has no usable CUDA device (torch.cuda.is_available() is "
                         f"False); use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu, cuda or cuda:N, got {name!r}")
    return dev


def _check_common(a) -> None:
    if not Path(a.checkpoint).is_file():
        raise FileNotFoundError(f"avatar checkpoint: no such file: {a.checkpoint}")
    if a.matte is not None and a.no_matte:
        raise ValueError("--matte and --no-matte contradict each other: give one")
    for name in ("recon", "face_model"):
        v = getattr(a, name)
        if v is not None and not Path(v).is_file():
            raise FileNotFoundError(f"--{name.replace('_', '-')}: no such file: {v}")
    if a.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {a.batch}")


def _load(a, device):
    """(model, regressor or None) on `device`."""
    from .face3d import load_model, load_recon_checkpoint
    from .models import OneShotAvatar

    face = load_model(a.face_model)
    try:
        model = OneShotAvatar.load(a.checkpoint, face)
    except ValueError as e:
        if "built for morphable model" in str(e):
            raise ValueError(f"{a.checkpoint}: {e}; pass --face-model with the morphable model it was trained "
                             f"with") from None
        raise
    recon = None
    if a.recon is not None:
        sizes = (face.num_identity, face.num_expression, face.num_albedo)
        if sizes != (80, 64, 80):
            raise ValueError(f"--recon regresses Deep3DFaceRecon's BFM coefficients (80/64/80 modes); the morphable "
                             f"model has {sizes[0]}/{sizes[1]}/{sizes[2]}: pass --face-model BFM_model_front.mat")
        recon = load_recon_checkpoint(a.recon).to(device)
    return model.to(device).eval(), recon


def _estimate(model, recon, image, landmarks):
    from .face3d import estimate_face

    dev = next(model.parameters()).device
    return estimate_face(image.to(dev), landmarks.to(dev), model=model.face_model, recon=recon,
                         size=model.config.image_size)


def _source_front_end(a):
    """The face front end when the source needs it (no landmark file, or no matte given), else None; a missing
    extra is an error only when the landmarks must be detected."""
    from .face3d.detect import faces_available

    if a.landmarks is None:
        return _front_end("the source has no --landmarks FILE (" + _LANDMARK_FORMATS + ") and detecting them needs "
                          "the faces extra")
    if a.matte is None and not a.no_matte and faces_available():
        return _front_end("matting the source")
    return None


def _read_source_inputs(a):
    """The source image [1, 3, H, W] (matted), a note on its matte and landmarks, and its landmarks [1, K, 2],
    checked (before the model loads, so that bad input fails at once)."""
    front = _source_front_end(a)
    try:
        image, matte_note, rgb8 = _read_source(a.source, a.matte, a.no_matte, front)
        if a.landmarks is not None:
            lm = load_landmarks(a.landmarks)
            _check_landmark_count(lm, a.landmarks, a.recon)
            _check_inside(lm, image.shape[3], image.shape[2], str(a.landmarks))
        else:
            lm, note = _detect_one(front, rgb8, a.source)
            matte_note += f"; {note}"
    finally:
        if front is not None:
            front.close()
    return image, matte_note, lm[None]


def _source(a, model, recon, inputs):
    """(source estimate, avatar); reports the fit."""
    import torch

    image, matte_note, lm = inputs
    est = _estimate(model, recon, image, lm)
    fit = "regressed" if est.error is None else "landmark fit " + _fit_note(est, model.config.image_size, 0)
    _info(a, f"source {a.source}: {image.shape[3]} x {image.shape[2]}, {matte_note}; {fit} "
             f"(crop {model.config.image_size})")
    with torch.no_grad():
        avatar = model.reconstruct(est.image * 2 - 1, est.camera, est.coeffs, seed=a.seed)
    return est, avatar


def _fit_note(est, size: int, i: int) -> str:
    """The landmark distances left by the fit of face `i`, in pixels of a 512 x 512 crop (whatever the model's)."""
    k = 512 / size
    return f"error mean {float(est.mean_error[i]) * k:.2f} px, max {float(est.max_error[i]) * k:.2f} px (512² crop)"


def _info(a, msg: str) -> None:
    if not a.quiet:
        print(msg, file=sys.stderr)


def _to_uint8(image):
    """[B, 3, H, W] in [-1, 1] -> numpy uint8 [B, H, W, 3]."""
    return ((image.detach().float().clamp(-1, 1) + 1) * 127.5 + 0.5).to("cpu").byte().permute(0, 2, 3, 1).numpy()


def _frames_of(model, avatar, coeffs, cams, a):
    """uint8 [F, H, W, 3] frames and the render's depth/opacity [F, 1, r, r]."""
    import torch

    with torch.no_grad():
        out = model.animate(avatar, coeffs, cams, super_resolve=not a.no_sr, seed=a.seed)
    rgb = out.features[:, :3] if a.no_sr else out.image
    return _to_uint8(rgb), out.depth.float().cpu(), out.opacity.float().cpu()


def _repeat(coeffs, n: int):
    from dataclasses import fields

    from .face3d import Coeffs

    return Coeffs(*(getattr(coeffs, f.name).repeat(n, 1) for f in fields(coeffs) if f.name != "model"),
                  model=coeffs.model)


def _progress(a, total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="frame", disable=a.quiet, file=sys.stderr, dynamic_ncols=True)


def _save_png(path: Path, frame) -> None:
    """Write atomically (a temporary name, then a rename), so a kill never leaves a truncated frame."""
    from PIL import Image

    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(frame).save(tmp, format="PNG", compress_level=1)
    os.replace(tmp, path)


# -- outputs --------------------------------------------------------------------------------------------------

def depth_images(depth, opacity, size: int | None = None):
    """Depth maps [F, 1, r, r] as uint8 grey frames [F, size, size, 3]: near = white, far = dark, normalised
    over every frame's foreground (opacity >= 0.5; all pixels when there is none), background faded by the
    opacity. `size`: resize (bilinear) to this side."""
    import torch
    import torch.nn.functional as F

    d, o = depth.float(), opacity.float().clamp(0, 1)
    fg = o >= 0.5
    vals = d[fg] if bool(fg.any()) else d.reshape(-1)
    near, far = (float(vals.min()), float(vals.max())) if vals.numel() else (0.0, 1.0)
    v = ((far - d) / (far - near)).clamp(0, 1) if far > near else torch.ones_like(d)
    v = v * o
    if size is not None and v.shape[-1] != size:
        v = F.interpolate(v, size=(size, size), mode="bilinear", align_corners=False)
    return (v.clamp(0, 1) * 255 + 0.5).byte().expand(-1, 3, -1, -1).permute(0, 2, 3, 1).contiguous().numpy()


def relative_cameras(source_camera, driving_cameras, reference_camera):
    """Cameras [F, 25] that move around the source as the driving cameras [F, 25] move relative to the reference
    camera [1, 25] (the first driving frame's): the driving head's rigid motion, in the head's (world) frame,
    applied to the source camera [1, 25]: ``C_t = D_t D_ref^-1 C_src`` (cam2world matrices); the source's
    intrinsics. The reference frame itself gets the source camera."""
    import torch

    from .cameras import camera_label, split_label

    src_c2w, src_k = split_label(source_camera)
    drv, _ = split_label(driving_cameras)
    ref, _ = split_label(reference_camera)
    c2w = drv.double() @ torch.linalg.inv(ref.double()) @ src_c2w.double()
    c2w[:, 3] = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=c2w.dtype, device=c2w.device)  # exact homogeneous row
    return camera_label(c2w.to(src_c2w.dtype), src_k.expand(c2w.shape[0], 3, 3))


def track_landmarks(frames, *, quiet: bool = True):
    """The 68 landmarks [N, 68, 2] of the largest face in every frame of `frames` (an iterable of uint8 RGB
    frames with ``len``), tracked with the face front end; a frame without a face holds its neighbour's
    landmarks (the previous frame's; the first found one before it). Raises ValueError when no frame has one."""
    import torch
    from tqdm import tqdm

    out, missing = [], []
    front = _front_end("the driving frames have no --driving-landmarks FILE (" + _FRAME_LANDMARK_FORMATS + ") and "
                       "tracking them needs the faces extra", video=True)
    with front, tqdm(total=len(frames), desc="track", unit="frame", disable=quiet, file=sys.stderr,
                     dynamic_ncols=True) as bar:
        for i, f in enumerate(frames):
            faces = front(f)
            if faces:
                out.append(faces[0].landmarks)
            else:
                out.append(None)
                missing.append(i)
            bar.update(1)
    found = [x for x in out if x is not None]
    if not found:
        raise ValueError(f"{getattr(frames, 'path', 'driving')}: no face found in any of its {len(out)} frames")
    last = found[0]
    for i, x in enumerate(out):
        out[i] = last = x if x is not None else last
    if missing and not quiet:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        print(f"no face in {len(missing)} of {len(out)} driving frames ({shown}): they hold a neighbour's landmarks",
              file=sys.stderr)
    return torch.stack(out).float()


def _interocular(lm):
    """[N] inter-ocular distances (eye centres) of iBUG landmarks [N, 68, 2]."""
    return (lm[:, 36:42].mean(1) - lm[:, 42:48].mean(1)).norm(dim=-1)


#: One-euro settings for driving landmarks, in inter-ocular distances (see oneshot.face3d.smooth): a still face is
#: smoothed at 2 Hz, the cut-off rises by 20 Hz per inter-ocular distance per second of motion. Chosen on 4-second
#: videos of the two portraits under a known smooth motion (noise and H.264 added): the tracker's frame-to-frame
#: jitter about the true path drops by 38-48% for 0.06-0.13 px more RMS distance from it (lag).
SMOOTH_MIN_CUTOFF, SMOOTH_BETA = 2.0, 20.0


def smooth_landmarks(landmarks, fps: float, *, min_cutoff: float = SMOOTH_MIN_CUTOFF, beta: float = SMOOTH_BETA):
    """iBUG landmarks [N, 68, 2] of a video at `fps`, one-euro filtered; speeds are measured in the face's
    inter-ocular distance, so the settings hold at any image size."""
    from .face3d.smooth import smooth_sequence

    return smooth_sequence(landmarks, fps, scale=_interocular(landmarks).double(), min_cutoff=min_cutoff, beta=beta)


def landmark_jitter(landmarks):
    """The frame-to-frame jitter of iBUG landmarks [N, 68, 2] in inter-ocular distances (see
    :func:`oneshot.face3d.smooth.jitter`)."""
    from .face3d.smooth import jitter

    return jitter(landmarks / _interocular(landmarks).mean())


# -- commands -------------------------------------------------------------------------------------------------

def reconstruct_command(a) -> int:
    """``oneshot reconstruct``: the avatar of SOURCE on a novel-view orbit with the source's expression."""
    import torch
    from PIL import Image

    from .cameras import orbit_labels
    from .video import VideoWriter, _check_fps, write_gif

    _check_common(a)
    if a.frames < 1:
        raise ValueError(f"--frames must be >= 1, got {a.frames}")
    fps = _check_fps(a.fps)
    device = _device(a.device)
    out = Path(a.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; it must be a directory (created if missing)")
    inputs = _read_source_inputs(a)
    model, recon = _load(a, device)
    est, avatar = _source(a, model, recon, inputs)
    out.mkdir(parents=True, exist_ok=True)
    crop = (est.image[0].clamp(0, 1) * 255 + 0.5).byte().permute(1, 2, 0).cpu().numpy()
    Image.fromarray(crop).save(out / "source_crop.png")
    if a.save_frames:
        (out / "frames").mkdir(exist_ok=True)
    cams = orbit_labels(a.frames, device=device)
    frames, depths, opacities = [], [], []
    with VideoWriter(out / "orbit.mp4", fps) as video, _progress(a, a.frames, "orbit") as bar:
        for s in range(0, a.frames, a.batch):
            n = min(a.batch, a.frames - s)
            rgb, depth, opacity = _frames_of(model, avatar, _repeat(est.coeffs, n), cams[s:s + n], a)
            for i, f in enumerate(rgb):
                video.write(f)
                if a.save_frames:
                    _save_png(out / "frames" / f"{s + i:04d}.png", f)
            frames.extend(rgb)
            depths.append(depth)
            opacities.append(opacity)
            bar.update(n)
    write_gif(out / "orbit.gif", frames, fps)
    write_gif(out / "depth.gif", depth_images(torch.cat(depths), torch.cat(opacities), frames[0].shape[0]), fps)
    h, w = frames[0].shape[:2]
    print(f"wrote {out}: orbit.mp4, orbit.gif, depth.gif ({a.frames} frames, {w} x {h}, {fps:g} fps), "
          f"source_crop.png" + (", frames/" if a.save_frames else ""))
    return 0


def _driving_batches(frames, landmarks, batch: int):
    """(start index, list of uint8 frames, landmarks [n, K, 2]) chunks; the frame count must match."""
    chunk, start, count = [], 0, 0
    for f in frames:
        if count >= len(landmarks):
            raise ValueError(f"{frames.path} has more frames than the {len(landmarks)} of the driving landmarks")
        if chunk and f.shape != chunk[0].shape:
            raise ValueError(f"{frames.path}: frame {count} is {f.shape[1]} x {f.shape[0]}, the first "
                             f"{chunk[0].shape[1]} x {chunk[0].shape[0]}")
        chunk.append(f)
        count += 1
        if len(chunk) == batch:
            yield start, chunk, landmarks[start:count]
            chunk, start = [], count
    if chunk:
        yield start, chunk, landmarks[start:count]
    if count != len(landmarks):
        raise ValueError(f"{frames.path} decoded {count} frames, the driving landmarks have {len(landmarks)}")


#: The arguments that decide the frames: --resume refuses PNGs written with others.
_RUN_KEYS = ("checkpoint", "source", "driving", "landmarks", "driving_landmarks", "matte", "face_model", "recon",
             "batch", "no_sr", "seed", "relative_pose", "no_matte", "no_smooth")
_PATH_KEYS = ("checkpoint", "source", "driving", "landmarks", "driving_landmarks", "matte", "face_model", "recon")


def _run_record(a) -> dict:
    return {k: (str(Path(getattr(a, k)).resolve()) if k in _PATH_KEYS and getattr(a, k) is not None else getattr(a, k))
            for k in _RUN_KEYS}


def _prepare_frames_dir(a, folder: Path) -> None:
    """Create the PNG folder and record the run's arguments in it; with --resume, check them against the
    record of the interrupted run."""
    record, path = _run_record(a), folder / "run.json"
    if a.resume and path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            old = {}
        diff = [k for k in _RUN_KEYS if old.get(k) != record[k]]
        if diff:
            names = ", ".join("--" + k.replace("_", "-") for k in diff)
            raise ValueError(f"--resume: the frames in {folder}/ were rendered with other arguments (different: "
                             f"{names}); run without --resume to start over")
    folder.mkdir(exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")


def _output_paths(out: Path) -> dict:
    stem = out.with_suffix("")
    return {"video": out, "compare": stem.with_name(stem.name + "_compare.mp4"),
            "partial": stem.with_name(stem.name + ".partial.mp4"),
            "compare_partial": stem.with_name(stem.name + "_compare.partial.mp4"),
            "frames": stem.with_name(stem.name + "_frames")}


def animate_command(a) -> int:
    """``oneshot animate``: SOURCE's avatar with the expression and pose of every DRIVING frame, as OUT.mp4."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from .video import VideoWriter, read_frames, read_image

    _check_common(a)
    out = Path(a.out)
    if out.suffix.lower() != ".mp4":
        raise ValueError(f"--out must be an .mp4 file, got {out}")
    frames = read_frames(a.driving, fps=a.fps)
    if a.driving_landmarks is not None:
        driving_lm = load_landmark_frames(a.driving_landmarks)
        if len(driving_lm) != len(frames):
            raise ValueError(f"{a.driving_landmarks} has landmarks for {len(driving_lm)} frames, {a.driving} has "
                             f"{len(frames)} frames: give one entry per frame")
        _check_landmark_count(driving_lm, a.driving_landmarks, a.recon)
    else:
        driving_lm = track_landmarks(frames, quiet=a.quiet)
    if not a.no_smooth and len(driving_lm) >= 3 and driving_lm.shape[1] == 68:
        raw = driving_lm
        driving_lm = smooth_landmarks(raw, frames.fps)
        _info(a, f"driving landmarks smoothed (one-euro filter; --no-smooth turns it off): jitter "
                 f"{float(landmark_jitter(raw)):.3f} -> {float(landmark_jitter(driving_lm)):.3f} inter-ocular "
                 f"distances per frame²")
    paths = _output_paths(out)
    device = _device(a.device)
    inputs = _read_source_inputs(a)
    out.parent.mkdir(parents=True, exist_ok=True)
    _prepare_frames_dir(a, paths["frames"])
    model, recon = _load(a, device)
    est, avatar = _source(a, model, recon, inputs)
    N = len(frames)
    first_size = None
    reference = None
    written, reused, errors = 0, 0, []
    compare = not a.no_compare
    try:
        with VideoWriter(paths["partial"], frames.fps) as video, \
                VideoWriter(paths["compare_partial"], frames.fps) as video_cmp, _progress(a, N, "animate") as bar:
            for start, chunk, lm in _driving_batches(frames, driving_lm, a.batch):
                if first_size is None:
                    first_size = chunk[0].shape
                    _check_inside(driving_lm, first_size[1], first_size[0], str(a.driving_landmarks))
                images = torch.from_numpy(np.stack(chunk)).permute(0, 3, 1, 2).float() / 255
                drv = _estimate(model, recon, images, lm)
                if drv.error is not None:
                    errors.append(drv.mean_error.cpu() * (512 / model.config.image_size))
                cams = drv.camera
                if a.relative_pose:
                    if reference is None:
                        reference = drv.camera[:1]
                    cams = relative_cameras(est.camera, drv.camera, reference)
                pngs = [paths["frames"] / f"{start + i:06d}.png" for i in range(len(chunk))]
                if a.resume and all(p.is_file() for p in pngs):
                    rgb = np.stack([read_image(p) for p in pngs])
                    reused += len(pngs)
                else:
                    rgb, _, _ = _frames_of(model, avatar, drv.coeffs, cams, a)
                    for p, f in zip(pngs, rgb):
                        _save_png(p, f)
                for i, f in enumerate(rgb):
                    video.write(f)
                    if compare:
                        crop = F.interpolate(drv.image[i:i + 1].float(), size=f.shape[:2], mode="bilinear",
                                             align_corners=False, antialias=True)
                        video_cmp.write(np.concatenate([_to_uint8(crop * 2 - 1)[0], f], 1))
                written += len(chunk)
                bar.update(len(chunk))
    except BaseException:
        if written < N:
            print(f"animate stopped after {written} of {N} frames: the finished frames are in {paths['frames']}/ "
                  f"and {paths['partial']}; run the same command with --resume to render only the rest",
                  file=sys.stderr)
        raise
    os.replace(paths["partial"], paths["video"])
    if compare:
        os.replace(paths["compare_partial"], paths["compare"])
    else:
        paths["compare_partial"].unlink(missing_ok=True)
    if not a.keep_frames:
        for i in range(N):
            (paths["frames"] / f"{i:06d}.png").unlink(missing_ok=True)
        (paths["frames"] / "run.json").unlink(missing_ok=True)
        try:
            paths["frames"].rmdir()
        except OSError:  # other files in it: leave it
            pass
    fit = ""
    if errors:
        e = torch.cat(errors)
        fit = (f"; driving landmark fit: mean error per frame median {float(e.median()):.2f} px, max "
               f"{float(e.max()):.2f} px (512² crop)")
    _info(a, f"rendered {N - reused} frames" + (f", reused {reused}" if reused else "") + fit)
    print(f"wrote {out} ({N} frames, {frames.fps:g} fps)" + (f" and {paths['compare']}" if compare else ""))
    return 0


# -- parsers --------------------------------------------------------------------------------------------------

_LM_HELP = ("landmarks of SOURCE, in its pixel coordinates (x right, y down, top-left pixel centred at (0.5, 0.5)): "
            + _LANDMARK_FORMATS + ". Default: detected (needs the faces extra: pip install 'oneshot[faces]')")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="the avatar (.safetensors written by OneShotAvatar.save)")
    p.add_argument("source", metavar="SOURCE", help="the source portrait (an image file)")
    p.add_argument("--landmarks", default=None, metavar="FILE", help=_LM_HELP)
    p.add_argument("--matte", default=None, metavar="PNG",
                   help="8-bit matte of SOURCE (255 = head); the background becomes black, as in training. Default: "
                        "SOURCE's alpha channel, else MediaPipe's selfie segmentation (faces extra), else none")
    p.add_argument("--no-matte", action="store_true", help="keep SOURCE's background (no matte at all)")
    p.add_argument("--face-model", default=None, metavar="PATH",
                   help="the morphable model the avatar was trained with: a BFM .mat or an ICT-FaceKit .npz "
                        "(default: the built-in model)")
    p.add_argument("--recon", default=None, metavar="EPOCH_20.pth",
                   help="Deep3DFaceRecon's checkpoint: regress the coefficients instead of fitting the 68 landmarks "
                        "(needs --face-model BFM_model_front.mat; 5 landmarks then suffice, but they are still "
                        "needed for the alignment)")
    p.add_argument("--batch", type=int, default=8, help="frames rendered at once (bounds the memory; default 8)")
    p.add_argument("--no-sr", action="store_true",
                   help="write the low-resolution render (its RGB features) instead of the super-resolved image")
    p.add_argument("--seed", type=int, default=0, help="seed of the renders' sampling noise (default 0)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or notes")


def add_parsers(subparsers) -> None:
    """Register ``reconstruct`` and ``animate`` on an ``argparse`` subparsers object (their ``func`` returns an
    exit code; bad input raises ValueError or FileNotFoundError)."""
    r = subparsers.add_parser(
        "reconstruct", help="reconstruct an avatar from one portrait and render a novel-view orbit",
        description="Reconstruct the avatar of SOURCE and render it on a novel-view orbit with the source's "
                    "expression: DIR/orbit.mp4, DIR/orbit.gif, DIR/depth.gif (normalised depth), "
                    "DIR/source_crop.png (the aligned, matted crop the model sees) and, with --save-frames, "
                    "DIR/frames/NNNN.png.")
    _common(r)
    r.add_argument("--out", required=True, metavar="DIR", help="output directory (created)")
    r.add_argument("--frames", type=int, default=48, help="frames of the orbit (default 48)")
    r.add_argument("--fps", type=float, default=24.0, help="frame rate of the orbit videos (default 24)")
    r.add_argument("--save-frames", action="store_true", help="also write every frame as DIR/frames/NNNN.png")
    r.set_defaults(func=reconstruct_command)

    an = subparsers.add_parser(
        "animate", help="drive an avatar with a video, a folder of frames or an image",
        description="Reconstruct the avatar of SOURCE and render it with the expression and head pose of every "
                    "DRIVING frame (estimated from the frame's landmarks, tracked or from a file, or regressed with "
                    "--recon): OUT.mp4 and "
                    "a side-by-side OUT_compare.mp4 (the driving frame's aligned crop | the render). Finished frames "
                    "are kept as PNGs in OUT_frames/ and a playable OUT.partial.mp4 until the end; after a crash, "
                    "rerun with --resume.")
    _common(an)
    an.add_argument("driving", metavar="DRIVING",
                    help="the driving video (.mp4, .mov, .mkv, .avi, .webm, .gif), a folder of frames (natural order "
                         "of the names) or one image")
    an.add_argument("--driving-landmarks", default=None, metavar="FILE",
                    help="landmarks of every driving frame, in its pixels: " + _FRAME_LANDMARK_FORMATS
                    + ". Default: tracked in the frames (needs the faces extra)")
    an.add_argument("--no-smooth", action="store_true",
                    help="use each driving frame's landmarks as they are (default: a one-euro filter over time "
                         "removes the detector's jitter)")
    an.add_argument("--out", required=True, metavar="OUT.mp4", help="the output video")
    an.add_argument("--relative-pose", action="store_true",
                    help="move the source's head as the driving head moves relative to the first driving frame "
                         "(default: each frame's own absolute pose)")
    an.add_argument("--fps", type=float, default=None,
                    help="frame rate for a folder or an image (a video keeps its own; default 25)")
    an.add_argument("--no-compare", action="store_true", help="do not write OUT_compare.mp4")
    an.add_argument("--keep-frames", action="store_true", help="keep the PNG frames in OUT_frames/")
    an.add_argument("--resume", action="store_true",
                    help="reuse the PNG frames an interrupted run left in OUT_frames/ (refused if the arguments that "
                         "decide the frames differ)")
    an.set_defaults(func=animate_command)
