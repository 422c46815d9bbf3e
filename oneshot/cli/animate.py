"""``oneshot animate``: SOURCE's avatar with the expression and head pose of every DRIVING frame.

Driving frames need no matte: only their landmarks (tracked by the face front end, or from ``--driving-landmarks``)
and, with ``--recon``, the regressor are used. A driving video's landmarks are smoothed over time with a one-euro
filter (:func:`oneshot.face3d.smooth_landmarks`; ``--no-smooth`` turns it off).

Crash safety: every finished frame is written at once as a PNG into ``<OUT stem>_frames/`` next to OUT, and streamed
into ``<OUT stem>.partial.mp4`` (and ``<stem>_compare.partial.mp4``), which are closed properly on any exception
(Ctrl-C included), so they stay playable. Only after the last frame are they renamed to OUT (and
``<stem>_compare.mp4``) and the PNGs removed (``--keep-frames`` keeps them). After a crash, or a kill, the same command
with ``--resume`` reuses the PNGs and renders only the missing frames.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..face3d.landmarks import FRAME_LANDMARK_FORMATS
from ._common import add_resume, info, resolve_device, super_resolve
from .infer import (add_source_flags, check_landmark_count, check_source_flags, estimate, front_end, load_models,
                    progress, read_source_inputs, reconstruct_source, render_frames)

__all__ = ["add_parser", "animate_command"]

#: The arguments that decide the frames: --resume refuses PNGs written with others.
RUN_KEYS = ("checkpoint", "source", "driving", "landmarks", "driving_landmarks", "matte", "face_model", "recon",
            "batch", "sr", "seed", "relative_pose", "no_matte", "no_smooth")
PATH_KEYS = ("checkpoint", "source", "driving", "landmarks", "driving_landmarks", "matte", "face_model", "recon")


def driving_batches(frames, landmarks, batch: int):
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


def prepare_frames_dir(a, folder: Path, sr: bool) -> None:
    """Create the PNG folder and record the run's arguments in it; with --resume, check them against the record of
    the interrupted run."""
    from .._resume import record_differences, resolved_paths, write_record

    record = resolved_paths({k: (sr if k == "sr" else getattr(a, k)) for k in RUN_KEYS}, PATH_KEYS)
    path = folder / "run.json"
    diff = record_differences(path, record) if a.resume else []
    if diff:
        names = ", ".join("--" + k.replace("_", "-") for k in diff)
        raise ValueError(f"--resume: the frames in {folder}/ were rendered with other arguments (different: "
                         f"{names}); run without --resume to start over")
    folder.mkdir(exist_ok=True)
    write_record(path, record)


def output_paths(out: Path) -> dict:
    stem = out.with_suffix("")
    return {"video": out, "compare": stem.with_name(stem.name + "_compare.mp4"),
            "partial": stem.with_name(stem.name + ".partial.mp4"),
            "compare_partial": stem.with_name(stem.name + "_compare.partial.mp4"),
            "frames": stem.with_name(stem.name + "_frames")}


def driving_landmarks(a, frames, landmarks_file=None, flag: str = "--driving-landmarks"):
    """The driving frames' landmarks [N, K, 2]: from `landmarks_file` (the command's `flag`), else tracked; smoothed
    unless --no-smooth. Shared with ``export --frames``."""
    from ..face3d import FacesUnavailableError
    from ..face3d.landmarks import load_landmark_frames
    from ..face3d.track import landmark_jitter, smooth_landmarks, track_landmarks

    if landmarks_file is not None:
        lm = load_landmark_frames(landmarks_file)
        if len(lm) != len(frames):
            raise ValueError(f"{landmarks_file} has landmarks for {len(lm)} frames, {frames.path} has "
                             f"{len(frames)} frames: give one entry per frame")
        check_landmark_count(lm, landmarks_file, a.recon)
    else:
        front = front_end(f"the driving frames have no {flag} FILE (" + FRAME_LANDMARK_FORMATS + ") and tracking "
                          "them needs the faces extra", video=True)
        with front:
            try:
                lm = track_landmarks(frames, front=front, progress=not a.quiet, log=lambda m: info(a, m))
            except FacesUnavailableError as e:  # pragma: no cover - front_end has checked already
                raise ValueError(str(e)) from None
    if not a.no_smooth and len(lm) >= 3 and lm.shape[1] == 68:
        raw, lm = lm, smooth_landmarks(lm, frames.fps)
        info(a, f"driving landmarks smoothed (one-euro filter; --no-smooth turns it off): jitter "
                f"{float(landmark_jitter(raw)):.3f} -> {float(landmark_jitter(lm)):.3f} inter-ocular distances per "
                f"frame²")
    return lm


def finish(a, paths: dict, n: int, compare: bool) -> None:
    """Rename the partial videos to their final names and drop the PNGs (unless --keep-frames)."""
    os.replace(paths["partial"], paths["video"])
    if compare:
        os.replace(paths["compare_partial"], paths["compare"])
    else:
        paths["compare_partial"].unlink(missing_ok=True)
    if not a.keep_frames:
        for i in range(n):
            (paths["frames"] / f"{i:06d}.png").unlink(missing_ok=True)
        (paths["frames"] / "run.json").unlink(missing_ok=True)
        try:
            paths["frames"].rmdir()
        except OSError:  # other files in it: leave it
            pass


def animate_command(a) -> int:
    """``oneshot animate``: SOURCE's avatar with the expression and pose of every DRIVING frame, as OUT.mp4."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from ..cameras import relative_cameras
    from ..face3d.landmarks import check_landmarks_in_image
    from ..imageio import to_uint8, write_png
    from ..video import VideoWriter, read_frames, read_image

    check_source_flags(a)
    out = Path(a.out)
    if out.suffix.lower() != ".mp4":
        raise ValueError(f"--out must be an .mp4 file, got {out}")
    frames = read_frames(a.driving, fps=a.fps)
    lms = driving_landmarks(a, frames, a.driving_landmarks)
    paths = output_paths(out)
    device = resolve_device(a.device)
    inputs = read_source_inputs(a)
    out.parent.mkdir(parents=True, exist_ok=True)
    model, recon = load_models(a, device)
    sr = super_resolve(a, model)
    prepare_frames_dir(a, paths["frames"], sr)
    est, avatar = reconstruct_source(a, model, recon, inputs)
    N, reference, written, reused, errors = len(frames), None, 0, 0, []
    compare = not a.no_compare
    try:
        with VideoWriter(paths["partial"], frames.fps) as video, \
                VideoWriter(paths["compare_partial"], frames.fps) as video_cmp, progress(a, N, "animate") as bar:
            for start, chunk, lm in driving_batches(frames, lms, a.batch):
                if start == 0:
                    check_landmarks_in_image(lms, chunk[0].shape[1], chunk[0].shape[0], str(a.driving_landmarks))
                images = torch.from_numpy(np.stack(chunk)).permute(0, 3, 1, 2).float() / 255
                drv = estimate(model, recon, images, lm)
                if drv.error is not None:
                    errors.append(drv.mean_error.cpu() * (512 / model.config.image_size))
                cams = drv.camera
                if a.relative_pose:
                    reference = drv.camera[:1] if reference is None else reference
                    cams = relative_cameras(est.camera, drv.camera, reference)
                pngs = [paths["frames"] / f"{start + i:06d}.png" for i in range(len(chunk))]
                if a.resume and all(p.is_file() for p in pngs):
                    rgb = np.stack([read_image(p) for p in pngs])
                    reused += len(pngs)
                else:
                    rgb, _, _ = render_frames(model, avatar, drv.coeffs, cams, sr, a.seed)
                    for p, f in zip(pngs, rgb):
                        write_png(p, f, compression=1)
                for i, f in enumerate(rgb):
                    video.write(f)
                    if compare:
                        crop = F.interpolate(drv.image[i:i + 1].float(), size=f.shape[:2], mode="bilinear",
                                             align_corners=False, antialias=True)
                        video_cmp.write(np.concatenate([to_uint8(crop * 2 - 1)[0], f], 1))
                written += len(chunk)
                bar.update(len(chunk))
    except BaseException:
        if written < N:
            print(f"animate stopped after {written} of {N} frames: the finished frames are in {paths['frames']}/ "
                  f"and {paths['partial']}; run the same command with --resume to render only the rest",
                  file=sys.stderr)
        raise
    finish(a, paths, N, compare)
    fit = ""
    if errors:
        e = torch.cat(errors)
        fit = (f"; driving landmark fit: mean error per frame median {float(e.median()):.2f} px, max "
               f"{float(e.max()):.2f} px (512² crop)")
    info(a, f"rendered {N - reused} frames" + (f", reused {reused}" if reused else "") + fit)
    print(f"wrote {out} ({N} frames, {frames.fps:g} fps)" + (f" and {paths['compare']}" if compare else ""))
    return 0


def add_parser(subparsers) -> None:
    an = subparsers.add_parser(
        "animate", help="drive an avatar with a video, a folder of frames or an image",
        description="Reconstruct the avatar of SOURCE and render it with the expression and head pose of every "
                    "DRIVING frame (estimated from the frame's landmarks, tracked or from a file, or regressed with "
                    "--recon): OUT.mp4 and a side-by-side OUT_compare.mp4 (the driving frame's aligned crop | the "
                    "render). Finished frames are kept as PNGs in OUT_frames/ and a playable OUT.partial.mp4 until "
                    "the end; after a crash, rerun with --resume.")
    add_source_flags(an)
    an.add_argument("driving", metavar="DRIVING",
                    help="the driving video (.mp4, .mov, .mkv, .avi, .webm, .gif), a folder of frames (natural order "
                         "of the names) or one image")
    an.add_argument("--driving-landmarks", default=None, metavar="FILE",
                    help="landmarks of every driving frame, in its pixels: " + FRAME_LANDMARK_FORMATS
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
    add_resume(an, "reuse the PNG frames an interrupted run left in OUT_frames/")
    an.set_defaults(func=animate_command)
