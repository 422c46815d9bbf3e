"""``oneshot export``: the avatar of a portrait as a mesh file (.glb, .ply, .obj), or one mesh per frame of a driving
video, resumable. The work is :mod:`oneshot.export`; the portrait is read as ``reconstruct`` reads it
(:mod:`oneshot.cli.infer`), driving frames as ``animate`` reads them (:mod:`oneshot.cli.animate`)."""

from __future__ import annotations

from pathlib import Path

from ..face3d.landmarks import FRAME_LANDMARK_FORMATS
from ._common import (add_checkpoint, add_device, add_face_model, add_quiet, add_recon, add_resume, add_seed,
                      check_file, info, resolve_device)
from .infer import LANDMARK_HELP, check_landmark_count, estimate, front_end, load_models, read_source_inputs, \
    reconstruct_source

__all__ = ["add_parser", "export_command"]

_FORMATS = ("glb", "ply", "obj")
#: The arguments that decide the meshes of a --frames run: --resume refuses a folder written with others.
RUN_KEYS = ("checkpoint", "source", "frames", "landmarks", "frames_landmarks", "matte", "no_matte", "face_model",
            "recon", "resolution", "level", "min_piece", "no_colors", "no_pose", "no_smooth", "seed")
PATH_KEYS = ("checkpoint", "source", "frames", "landmarks", "frames_landmarks", "matte", "face_model", "recon")


def check_args(a) -> None:
    """Bad flags named before anything loads."""
    check_file(a.checkpoint, "--checkpoint")
    check_file(a.face_model, "--face-model")
    check_file(a.recon, "--recon")
    if a.matte is not None and a.no_matte:
        raise ValueError("--matte and --no-matte contradict each other: give one")
    if a.resolution < 2:
        raise ValueError(f"--resolution must be >= 2, got {a.resolution}")
    if not 0.0 <= a.min_piece <= 1.0:
        raise ValueError(f"--min-piece must be in [0, 1], got {a.min_piece}")
    if a.frames is not None and a.driver is not None:
        raise ValueError("--driver (one expression and pose) and --frames (one per video frame) exclude each other")
    suffix = Path(a.out).suffix.lower()
    if a.frames is None:
        for flag, v in (("--resume", a.resume), ("--frames-landmarks", a.frames_landmarks), ("--format", a.format),
                        ("--fps", a.fps), ("--no-smooth", a.no_smooth)):
            if v:
                raise ValueError(f"{flag} is for --frames VIDEO")
        if suffix.lstrip(".") not in _FORMATS:
            raise ValueError(f"--out must end in .glb, .ply, .obj (the mesh format), got {a.out}")
    elif suffix.lstrip(".") in _FORMATS:
        raise ValueError(f"with --frames, --out is a folder for the numbered meshes (pick the format with --format), "
                         f"got {a.out}")
    if a.driver_landmarks is not None and a.driver is None:
        raise ValueError("--driver-landmarks is for --driver IMAGE")
    if a.no_pose and a.driver is None and a.frames is None:
        raise ValueError("--no-pose is for --driver IMAGE or --frames VIDEO (without them the pose is canonical)")
    for name in ("driver", "frames", "driver_landmarks", "frames_landmarks"):
        v = getattr(a, name)
        if v is not None and not Path(v).exists():
            raise FileNotFoundError(f"--{name.replace('_', '-')}: no such file: {v}")


def driver_estimate(a, model, recon):
    """The --driver image's face estimate (coefficients, camera), from --driver-landmarks or detected."""
    import torch

    from ..face3d.landmarks import check_landmarks_in_image, load_landmarks
    from ..video import read_image

    rgb = read_image(a.driver)
    if a.driver_landmarks is not None:
        lm = load_landmarks(a.driver_landmarks)
        check_landmark_count(lm, a.driver_landmarks, recon)
        check_landmarks_in_image(lm, rgb.shape[1], rgb.shape[0], str(a.driver_landmarks))
    else:
        with front_end("the driver has no --driver-landmarks FILE and detecting them needs the faces extra") as f:
            faces = f(rgb)
        if not faces:
            raise ValueError(f"{a.driver}: no face found in the driver image (pass --driver-landmarks FILE if there "
                             f"is one)")
        lm = faces[0].landmarks
    image = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255
    return estimate(model, recon, image, torch.as_tensor(lm)[None])


def frames_estimate(a, model, recon):
    """(coefficients [N], cameras [N, 25], fps) of every frame of --frames VIDEO."""
    import numpy as np
    import torch

    from ..face3d import Coeffs
    from ..face3d.landmarks import check_landmarks_in_image
    from ..video import read_frames
    from .animate import driving_batches, driving_landmarks

    frames = read_frames(a.frames, fps=a.fps)
    lms = driving_landmarks(a, frames, a.frames_landmarks, "--frames-landmarks")
    coeffs, cams = [], []
    for start, chunk, lm in driving_batches(frames, lms, 16):
        if start == 0:
            check_landmarks_in_image(lms, chunk[0].shape[1], chunk[0].shape[0], str(a.frames_landmarks or a.frames))
        images = torch.from_numpy(np.stack(chunk)).permute(0, 3, 1, 2).float() / 255
        est = estimate(model, recon, images, torch.as_tensor(lm))
        coeffs.append(est.coeffs)
        cams.append(est.camera)
    return Coeffs.cat(coeffs), torch.cat(cams), frames.fps


def export_command(a) -> int:
    """``oneshot export``."""
    import sys

    from .._resume import resolved_paths
    from ..export import MeshSequence, export_avatar, export_sequence, save_mesh
    from ..export.mesh import require

    check_args(a)
    try:  # the export extra, said before the model loads
        require("skimage.measure", "scipy.sparse.csgraph", "trimesh")
    except ImportError as e:
        raise ValueError(str(e)) from None
    device = resolve_device(a.device)
    inputs = read_source_inputs(a)
    model, recon = load_models(a, device)
    est, avatar = reconstruct_source(a, model, recon, inputs)
    kw = dict(resolution=a.resolution, level=a.level, min_piece=a.min_piece, colors=not a.no_colors)
    if a.frames is None:
        coeffs = camera = None
        if a.driver is not None:
            drv = driver_estimate(a, model, recon)
            coeffs, camera = drv.coeffs, (None if a.no_pose else drv.camera)
        mesh = export_avatar(model, avatar, coeffs=coeffs, camera=camera, progress=not a.quiet, **kw)
        path = save_mesh(mesh, a.out, {"source": str(a.source), "checkpoint": str(a.checkpoint),
                                       "driver": None if a.driver is None else str(a.driver)})
        expression = "a neutral expression" if coeffs is None else "the driver's expression"
        pose = "the canonical pose" if camera is None else "the driver's head pose"
        print(f"wrote {path} ({mesh.num_vertices} vertices, {mesh.num_faces} faces; level {a.level:g} at "
              f"{a.resolution}^3; {expression}, {pose})")
        return 0
    coeffs, cams, fps = frames_estimate(a, model, recon)
    record = {**resolved_paths({k: getattr(a, k) for k in RUN_KEYS}, PATH_KEYS), "fps": fps}
    seq = MeshSequence(a.out, "." + (a.format or "glb"), record=record, resume=a.resume, frames=coeffs.batch_size)
    todo = len(seq.missing())
    if todo < seq.frames:
        info(a, f"resuming: {seq.frames - todo} of {seq.frames} meshes already exported")
    try:
        paths = export_sequence(model, avatar, coeffs, None if a.no_pose else cams, seq, progress=not a.quiet, **kw)
    except BaseException:
        done = seq.frames - len(seq.missing())
        print(f"export stopped after {done} of {seq.frames} meshes: the finished ones are in {seq.folder}/; run "
              f"the same command with --resume to export only the rest", file=sys.stderr)
        raise
    print(f"wrote {len(paths)} meshes to {seq.folder}/ ({paths[0].name} ... {paths[-1].name}, {fps:g} fps)")
    return 0


def add_parser(subparsers) -> None:
    from ..export.mesh import DEFAULT_LEVEL, DEFAULT_MIN_PIECE

    p = subparsers.add_parser(
        "export", help="export the avatar of a portrait as a mesh (.glb, .ply, .obj)",
        description="Reconstruct the avatar of PORTRAIT, sample its density on a grid inside the tri-plane box "
                    "and write the iso-surface (marching cubes) with vertex colours as OUT (.glb, .ply or .obj, in "
                    "oneshot's world frame: x right, y up, z out of the face, 1 unit = 370.4 mm; said in the file). "
                    "Neutral expression and canonical pose by default; --driver IMAGE gives its expression and head "
                    "pose; --frames VIDEO writes one mesh per frame into the folder OUT (resumable). Needs the "
                    "export extra: pip install 'oneshot-avatar[export]'.")
    add_checkpoint(p)
    p.add_argument("source", metavar="PORTRAIT", help="the source portrait (an image file)")
    p.add_argument("--out", required=True, metavar="OUT",
                   help="the mesh file (.glb, .ply or .obj); with --frames, a folder for 000000.glb, 000001.glb, ...")
    p.add_argument("--resolution", type=int, default=256,
                   help="grid points per axis over the box (default 256: a 1.45 mm voxel)")
    p.add_argument("--level", type=float, default=DEFAULT_LEVEL,
                   help=f"iso level on the decoder's raw density (default {DEFAULT_LEVEL:g}, EG3D's)")
    p.add_argument("--min-piece", type=float, default=DEFAULT_MIN_PIECE,
                   help="remove pieces with fewer faces than this fraction of the largest piece's (default "
                        f"{DEFAULT_MIN_PIECE:g}; 0 keeps all)")
    p.add_argument("--no-colors", action="store_true", help="no vertex colours")
    p.add_argument("--driver", default=None, metavar="IMAGE",
                   help="give the avatar this image's expression and head pose (default: neutral, canonical pose)")
    p.add_argument("--driver-landmarks", default=None, metavar="FILE",
                   help="landmarks of --driver, in its pixels (formats as --landmarks); default: detected")
    p.add_argument("--no-pose", action="store_true",
                   help="with --driver or --frames: take the expression only and keep the canonical pose")
    p.add_argument("--frames", default=None, metavar="VIDEO",
                   help="one mesh per frame of this video (or folder of frames, or image): OUT/000000.glb, ...")
    p.add_argument("--frames-landmarks", default=None, metavar="FILE",
                   help="landmarks of every frame of --frames: " + FRAME_LANDMARK_FORMATS + ". Default: tracked")
    p.add_argument("--format", choices=_FORMATS, default=None, help="with --frames: the mesh format (default glb)")
    p.add_argument("--no-smooth", action="store_true", help="with --frames: no one-euro smoothing of the landmarks")
    p.add_argument("--fps", type=float, default=None, help="with --frames: frame rate of a folder of frames")
    add_resume(p, "with --frames: keep the meshes an interrupted run left in OUT")
    p.add_argument("--landmarks", default=None, metavar="FILE", help=LANDMARK_HELP.replace("SOURCE", "PORTRAIT"))
    p.add_argument("--matte", default=None, metavar="PNG", help="8-bit matte of PORTRAIT (255 = head)")
    p.add_argument("--no-matte", action="store_true", help="keep PORTRAIT's background")
    add_face_model(p, "the morphable model the avatar was trained with (default: the built-in one)")
    add_recon(p, "Deep3DFaceRecon's checkpoint: regress the coefficients (needs --face-model BFM_model_front.mat)")
    add_seed(p, what="the reconstruction's render")
    add_device(p)
    add_quiet(p)
    p.set_defaults(func=export_command)

