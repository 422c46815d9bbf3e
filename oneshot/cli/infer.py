"""``oneshot reconstruct``: the avatar of one portrait on a novel-view orbit; and what ``animate`` shares with it
(the source's flags, reading the source, its landmarks and matte, the model and the regressor).

Landmark files, their formats and checks: :mod:`oneshot.face3d.landmarks`; without one, the face front end
(``faces`` extra) detects them. The model wants the background removed: ``--matte``, else the source's alpha channel,
else MediaPipe's selfie segmentation (``faces`` extra), else none (``--no-matte`` keeps the background).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..face3d.landmarks import LANDMARK_FORMATS
from ._common import (add_checkpoint, add_device, add_face_model, add_quiet, add_recon, add_seed, add_sr, check_file,
                      info, load_avatar, resolve_device, super_resolve)

__all__ = ["add_parser", "reconstruct_command", "add_source_flags"]

LANDMARK_HELP = ("landmarks of SOURCE, in its pixel coordinates (x right, y down, top-left pixel centred at (0.5, 0.5)): "
                 + LANDMARK_FORMATS + ". Default: detected (needs the faces extra: pip install "
                 "'oneshot-avatar[faces]')")


def add_source_flags(p: argparse.ArgumentParser) -> None:
    """The flags of the source portrait and the model, shared by reconstruct and animate."""
    add_checkpoint(p)
    p.add_argument("source", metavar="SOURCE", help="the source portrait (an image file)")
    p.add_argument("--landmarks", default=None, metavar="FILE", help=LANDMARK_HELP)
    p.add_argument("--matte", default=None, metavar="PNG",
                   help="8-bit matte of SOURCE (255 = head); the background becomes black, as in training. Default: "
                        "SOURCE's alpha channel, else MediaPipe's selfie segmentation (faces extra), else none")
    p.add_argument("--no-matte", action="store_true", help="keep SOURCE's background (no matte at all)")
    add_face_model(p, "the morphable model the avatar was trained with: a BFM .mat or an ICT-FaceKit .npz "
                      "(default: the built-in model)")
    add_recon(p, "Deep3DFaceRecon's checkpoint: regress the coefficients instead of fitting the 68 landmarks (needs "
                 "--face-model BFM_model_front.mat; 5 landmarks then suffice, but they are still needed for the "
                 "alignment)")
    p.add_argument("--batch", type=int, default=8, help="frames rendered at once (bounds the memory; default 8)")
    add_sr(p)
    add_seed(p)
    add_device(p)
    add_quiet(p)


def check_source_flags(a) -> None:
    check_file(a.checkpoint, "avatar checkpoint")
    if a.matte is not None and a.no_matte:
        raise ValueError("--matte and --no-matte contradict each other: give one")
    check_file(a.recon, "--recon")
    check_file(a.face_model, "--face-model")
    if a.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {a.batch}")


def check_landmark_count(lm, path, recon) -> None:
    if lm.shape[-2] == 5 and recon is None:
        raise ValueError(f"{path}: 5 landmarks only align the face; fitting the morphable model needs the 68 iBUG "
                         f"points (or pass --recon to regress the coefficients)")


def front_end(why: str, video: bool = False):
    """A :class:`~oneshot.face3d.FaceFrontEnd`, or a ValueError saying what to install or pass instead."""
    from ..face3d.detect import FaceFrontEnd, FacesUnavailableError

    try:
        return FaceFrontEnd(video=video)
    except FacesUnavailableError as e:
        raise ValueError(f"{why}: {e}") from None


def read_source_inputs(a):
    """The source image [1, 3, H, W] (matted), a note on its matte and landmarks, and its landmarks [1, K, 2],
    checked (before the model loads, so that bad input fails at once)."""
    from ..face3d.detect import faces_available
    from ..face3d.landmarks import check_landmarks_in_image, load_landmarks
    from ..imageio import read_portrait

    front = None
    if a.landmarks is None:
        front = front_end("the source has no --landmarks FILE (" + LANDMARK_FORMATS + ") and detecting them needs "
                          "the faces extra")
    elif a.matte is None and not a.no_matte and faces_available():
        front = front_end("matting the source")
    try:
        image, matte_note, rgb8 = read_portrait(a.source, a.matte, a.no_matte, front)
        if a.landmarks is not None:
            lm = load_landmarks(a.landmarks)
            check_landmark_count(lm, a.landmarks, a.recon)
            check_landmarks_in_image(lm, image.shape[3], image.shape[2], str(a.landmarks))
        else:
            faces = front(rgb8)
            if not faces:
                raise ValueError(f"{a.source}: no face found in the source image (pass --landmarks FILE if there is "
                                 f"one)")
            lm = faces[0].landmarks
            matte_note += "; " + (f"{len(faces)} faces found, using the largest" if len(faces) > 1 else "face detected")
    finally:
        if front is not None:
            front.close()
    return image, matte_note, lm[None]


def load_models(a, device):
    """(avatar, Deep3DFaceRecon regressor or None) on `device`."""
    from ..face3d import load_recon_checkpoint

    model, face = load_avatar(a.checkpoint, a.face_model, device)
    recon = None
    if a.recon is not None:
        sizes = (face.num_identity, face.num_expression, face.num_albedo)
        if sizes != (80, 64, 80):
            raise ValueError(f"--recon regresses Deep3DFaceRecon's BFM coefficients (80/64/80 modes); the morphable "
                             f"model has {sizes[0]}/{sizes[1]}/{sizes[2]}: pass --face-model BFM_model_front.mat")
        recon = load_recon_checkpoint(a.recon).to(device)
    return model, recon


def estimate(model, recon, image, landmarks):
    from ..face3d import estimate_face

    dev = next(model.parameters()).device
    return estimate_face(image.to(dev), landmarks.to(dev), model=model.face_model, recon=recon,
                         size=model.config.image_size)


def fit_note(est, size: int, i: int) -> str:
    """The landmark distances left by the fit of face `i`, in pixels of a 512 x 512 crop (whatever the model's)."""
    k = 512 / size
    return f"error mean {float(est.mean_error[i]) * k:.2f} px, max {float(est.max_error[i]) * k:.2f} px (512² crop)"


def reconstruct_source(a, model, recon, inputs):
    """(the source's face estimate, its avatar); reports the fit."""
    import torch

    image, matte_note, lm = inputs
    est = estimate(model, recon, image, lm)
    fit = "regressed" if est.error is None else "landmark fit " + fit_note(est, model.config.image_size, 0)
    info(a, f"source {a.source}: {image.shape[3]} x {image.shape[2]}, {matte_note}; {fit} "
            f"(crop {model.config.image_size})")
    with torch.no_grad():
        avatar = model.reconstruct(est.image * 2 - 1, est.camera, est.coeffs, seed=a.seed)
    return est, avatar


def render_frames(model, avatar, coeffs, cams, sr: bool, seed: int):
    """uint8 [F, H, W, 3] frames and the render's depth / opacity [F, 1, r, r]."""
    import torch

    from ..imageio import to_uint8

    with torch.no_grad():
        out = model.animate(avatar, coeffs, cams, super_resolve=sr, seed=seed)
    rgb = out.image if sr else out.features[:, :3]
    return to_uint8(rgb), out.depth.float().cpu(), out.opacity.float().cpu()


def progress(a, total: int, desc: str):
    from .._progress import progress_bar

    return progress_bar(total, desc=desc, unit="frame", enabled=not a.quiet)


def reconstruct_command(a) -> int:
    """``oneshot reconstruct``: the avatar of SOURCE on a novel-view orbit with the source's expression."""
    import torch

    from ..cameras import orbit_labels
    from ..imageio import depth_images, write_png
    from ..video import VideoWriter, check_fps, write_gif

    check_source_flags(a)
    if a.frames < 1:
        raise ValueError(f"--frames must be >= 1, got {a.frames}")
    fps = check_fps(a.fps)
    device = resolve_device(a.device)
    out = Path(a.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; it must be a directory (created if missing)")
    inputs = read_source_inputs(a)
    model, recon = load_models(a, device)
    sr = super_resolve(a, model)
    est, avatar = reconstruct_source(a, model, recon, inputs)
    out.mkdir(parents=True, exist_ok=True)
    write_png(out / "source_crop.png", est.image[0].permute(1, 2, 0).float().cpu())
    if a.save_frames:
        (out / "frames").mkdir(exist_ok=True)
    cams = orbit_labels(a.frames, device=device)
    frames, depths, opacities = [], [], []
    with VideoWriter(out / "orbit.mp4", fps) as video, progress(a, a.frames, "orbit") as bar:
        for s in range(0, a.frames, a.batch):
            n = min(a.batch, a.frames - s)
            rgb, depth, opacity = render_frames(model, avatar, est.coeffs.repeat(n), cams[s:s + n], sr, a.seed)
            for i, f in enumerate(rgb):
                video.write(f)
                if a.save_frames:
                    write_png(out / "frames" / f"{s + i:04d}.png", f, compression=1)
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


def add_parser(subparsers) -> None:
    r = subparsers.add_parser(
        "reconstruct", help="reconstruct an avatar from one portrait and render a novel-view orbit",
        description="Reconstruct the avatar of SOURCE and render it on a novel-view orbit with the source's "
                    "expression: DIR/orbit.mp4, DIR/orbit.gif, DIR/depth.gif (normalised depth), "
                    "DIR/source_crop.png (the aligned, matted crop the model sees) and, with --save-frames, "
                    "DIR/frames/NNNN.png.")
    add_source_flags(r)
    r.add_argument("--out", required=True, metavar="DIR", help="output directory (created)")
    r.add_argument("--frames", type=int, default=48, help="frames of the orbit (default 48)")
    r.add_argument("--fps", type=float, default=24.0, help="frame rate of the orbit videos (default 24)")
    r.add_argument("--save-frames", action="store_true", help="also write every frame as DIR/frames/NNNN.png")
    r.set_defaults(func=reconstruct_command)
