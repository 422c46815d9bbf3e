"""``oneshot export``: the avatar of a portrait as a mesh file, or one mesh per frame of a driving video.

    oneshot export --checkpoint CKPT PORTRAIT --out head.glb|head.ply|head.obj [--resolution 256] [--level 10]
                   [--driver IMAGE [--driver-landmarks FILE] [--no-pose]] [--landmarks FILE] [--matte PNG |
                   --no-matte] [--face-model PATH] [--recon PTH] [--min-piece 0.05] [--no-colors] [--seed 0]
                   [--device cpu|cuda] [--quiet]
    oneshot export --checkpoint CKPT PORTRAIT --frames VIDEO --out DIR [--format glb|ply|obj]
                   [--frames-landmarks FILE] [--no-smooth] [--no-pose] [--resume] [--fps F] ...

    oneshot evaluate --protocol geometry --checkpoint CKPT --data SYNTH_DIR --out DIR [--resolution 128]
                     [--level 10 [4 2 ...]] [--samples 20000] [--save-meshes] [--limit N] [--seed 0] [--resume] ...

The command layer only: the work is :mod:`oneshot.export` and :mod:`oneshot.eval.geometry` (and, for the portrait,
the helpers ``reconstruct`` and ``animate`` use). ``add_parser(subparsers)`` registers ``export``; ``run(args)``
returns the exit code. For ``evaluate --protocol geometry``: ``add_geometry_options(parser)`` adds the geometry
options to the ``evaluate`` parser and ``evaluate_geometry(args)`` runs it (the evaluate command's own options used:
checkpoint, data, out, face_model, limit, seed, device, resume, quiet). Bad input raises ValueError /
FileNotFoundError (the ``oneshot`` entry point prints them and exits with 2).
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["add_parser", "run", "add_geometry_options", "evaluate_geometry"]

_FORMATS = ("glb", "ply", "obj")


def _info(a, msg: str) -> None:
    if not a.quiet:
        print(msg, file=sys.stderr)


def _check_args(a) -> None:
    from .files import FORMATS

    if a.resolution < 2:
        raise ValueError(f"--resolution must be >= 2, got {a.resolution}")
    if not 0.0 <= a.min_piece <= 1.0:
        raise ValueError(f"--min-piece must be in [0, 1], got {a.min_piece}")
    if a.frames is not None and a.driver is not None:
        raise ValueError("--driver (one expression and pose) and --frames (one per video frame) exclude each other")
    if a.frames is None:
        for flag, v in (("--resume", a.resume), ("--frames-landmarks", a.frames_landmarks),
                        ("--format", a.format)):
            if v:
                raise ValueError(f"{flag} is for --frames VIDEO")
        if Path(a.out).suffix.lower() not in FORMATS:
            raise ValueError(f"--out must end in {', '.join(FORMATS)} (the mesh format), got {a.out}")
    elif Path(a.out).suffix.lower() in FORMATS:
        raise ValueError(f"with --frames, --out is a folder for the numbered meshes (pick the format with --format), "
                         f"got {a.out}")
    if a.driver_landmarks is not None and a.driver is None:
        raise ValueError("--driver-landmarks is for --driver IMAGE")
    for name in ("driver", "frames", "driver_landmarks", "frames_landmarks"):
        v = getattr(a, name)
        if v is not None and not Path(v).exists():
            raise FileNotFoundError(f"--{name.replace('_', '-')}: no such file: {v}")


def _driver(a, model, recon):
    """(coeffs [1], camera [1, 25]) of the --driver image."""
    import torch

    from ..cli_infer import _check_inside, _detect_one, _estimate, _front_end, load_landmarks
    from ..video import read_image

    rgb = read_image(a.driver)
    if a.driver_landmarks is not None:
        lm = load_landmarks(a.driver_landmarks)
        _check_inside(lm, rgb.shape[1], rgb.shape[0], str(a.driver_landmarks))
    else:
        with _front_end("the driver has no --driver-landmarks FILE and detecting them needs the faces extra") as f:
            lm, _ = _detect_one(f, rgb, a.driver, "driver")
    image = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255
    est = _estimate(model, recon, image, lm[None])
    return est.coeffs, est.camera


def _video(a, model, recon):
    """(coeffs [N], cameras [N, 25], fps) of every frame of --frames VIDEO."""
    import numpy as np
    import torch

    from ..cli_infer import (_check_inside, _driving_batches, _estimate, landmark_jitter, load_landmark_frames,
                             smooth_landmarks, track_landmarks)
    from ..face3d import Coeffs
    from ..video import read_frames

    frames = read_frames(a.frames, fps=a.fps)
    if a.frames_landmarks is not None:
        lm = load_landmark_frames(a.frames_landmarks)
        if len(lm) != len(frames):
            raise ValueError(f"{a.frames_landmarks} has landmarks for {len(lm)} frames, {a.frames} has {len(frames)}")
    else:
        lm = track_landmarks(frames, quiet=a.quiet)
    if not a.no_smooth and len(lm) >= 3 and lm.shape[1] == 68:
        raw, lm = lm, smooth_landmarks(lm, frames.fps)
        _info(a, f"driving landmarks smoothed (one-euro; --no-smooth turns it off): jitter "
                 f"{float(landmark_jitter(raw)):.3f} -> {float(landmark_jitter(lm)):.3f}")
    coeffs, cams = [], []
    for start, chunk, chunk_lm in _driving_batches(frames, lm, 16):
        if start == 0:
            _check_inside(lm, chunk[0].shape[1], chunk[0].shape[0], str(a.frames_landmarks or a.frames))
        images = torch.from_numpy(np.stack(chunk)).permute(0, 3, 1, 2).float() / 255
        est = _estimate(model, recon, images, chunk_lm)
        coeffs.append(est.coeffs)
        cams.append(est.camera)
    fields = ("identity", "expression", "albedo", "lighting", "rotation", "translation")
    all_coeffs = Coeffs(*(torch.cat([getattr(c, f) for c in coeffs]) for f in fields), model=coeffs[0].model)
    return all_coeffs, torch.cat(cams), frames.fps


def _record(a) -> dict:
    keys = ("checkpoint", "source", "frames", "landmarks", "frames_landmarks", "matte", "no_matte", "face_model",
            "recon", "resolution", "level", "min_piece", "no_colors", "no_pose", "no_smooth", "seed")
    paths = ("checkpoint", "source", "frames", "landmarks", "frames_landmarks", "matte", "face_model", "recon")
    return {k: (str(Path(getattr(a, k)).resolve()) if k in paths and getattr(a, k) is not None else getattr(a, k))
            for k in keys}


def run(a) -> int:
    """``oneshot export``."""
    from ..cli_infer import _check_common, _device, _load, _read_source_inputs, _source
    from . import ExportUnavailableError, MeshSequence, export_avatar, export_sequence, save_mesh
    from .mesh import require

    a.batch = 1
    _check_common(a)
    _check_args(a)
    try:
        require("skimage.measure", "trimesh")
    except ExportUnavailableError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    device = _device(a.device)
    inputs = _read_source_inputs(a)
    model, recon = _load(a, device)
    est, avatar = _source(a, model, recon, inputs)
    kw = dict(resolution=a.resolution, level=a.level, min_piece=a.min_piece, colors=not a.no_colors,
              progress=not a.quiet)
    if a.frames is None:
        coeffs = camera = None
        if a.driver is not None:
            coeffs, camera = _driver(a, model, recon)
            camera = None if a.no_pose else camera
        mesh = export_avatar(model, avatar, coeffs=coeffs, camera=camera, **kw)
        path = save_mesh(mesh, a.out, {"source": str(a.source), "driver": None if a.driver is None else str(a.driver),
                                       "checkpoint": str(a.checkpoint)})
        print(f"wrote {path} ({mesh.num_vertices} vertices, {mesh.num_faces} faces; level {a.level:g} at "
              f"{a.resolution}^3; {'neutral' if coeffs is None else 'the driver'}'s expression, "
              f"{'canonical' if camera is None else 'the driver'}'s pose)")
        return 0
    coeffs, cams, fps = _video(a, model, recon)
    seq = MeshSequence(a.out, "." + (a.format or "glb"), record={**_record(a), "fps": fps}, resume=a.resume,
                       frames=coeffs.batch_size)
    todo = len(seq.missing())
    if todo < seq.frames:
        _info(a, f"resuming: {seq.frames - todo} of {seq.frames} meshes already exported")
    kw.pop("progress")
    try:
        paths = export_sequence(model, avatar, coeffs, None if a.no_pose else cams, seq, progress=not a.quiet, **kw)
    except BaseException:
        done = seq.frames - len(seq.missing()) if seq.resume else None
        print(f"export stopped: the finished meshes are in {seq.folder}/; run the same command with --resume to "
              f"export only the rest" + (f" ({done} of {seq.frames} done)" if done is not None else ""),
              file=sys.stderr)
        raise
    print(f"wrote {len(paths)} meshes to {seq.folder}/ ({paths[0].name} ... {paths[-1].name}, {fps:g} fps)")
    return 0


def add_parser(subparsers) -> None:
    """Register ``export`` on an ``argparse`` subparsers object (``func`` = :func:`run`)."""
    from .mesh import DEFAULT_LEVEL, DEFAULT_MIN_PIECE

    p = subparsers.add_parser(
        "export", help="export the avatar of a portrait as a mesh (.glb, .ply, .obj)",
        description="Reconstruct the avatar of PORTRAIT, sample its density on a grid inside the tri-plane box, "
                    "and write the iso-surface (marching cubes) with vertex colours as OUT (.glb, .ply or .obj, "
                    "in oneshot's world frame: x right, y up, z out of the face, 1 unit = 370 mm; said in the "
                    "file). Neutral expression by default; --driver IMAGE gives its expression and head pose; "
                    "--frames VIDEO writes one mesh per frame into the folder OUT (resumable with --resume). "
                    "Needs the export extra: pip install 'oneshot[export]'.")
    p.add_argument("--checkpoint", required=True, help="the avatar (.safetensors written by OneShotAvatar.save)")
    p.add_argument("source", metavar="PORTRAIT", help="the source portrait (an image file)")
    p.add_argument("--out", required=True, metavar="OUT",
                   help="the mesh file (.glb, .ply or .obj); with --frames, a folder for 000000.glb, 000001.glb, ...")
    p.add_argument("--resolution", type=int, default=256,
                   help="grid points per axis over the box (default 256: a 3.9e-3 world-unit, 1.45 mm voxel)")
    p.add_argument("--level", type=float, default=DEFAULT_LEVEL,
                   help=f"iso level on the decoder's raw density (default {DEFAULT_LEVEL:g}, EG3D's)")
    p.add_argument("--min-piece", type=float, default=DEFAULT_MIN_PIECE,
                   help="remove pieces with fewer faces than this fraction of the largest piece's (default "
                        f"{DEFAULT_MIN_PIECE:g}; 0 keeps all)")
    p.add_argument("--no-colors", action="store_true", help="no vertex colours")
    p.add_argument("--driver", default=None, metavar="IMAGE",
                   help="give the avatar this image's expression and head pose (default: neutral, canonical pose)")
    p.add_argument("--driver-landmarks", default=None, metavar="FILE",
                   help="landmarks of --driver (as --landmarks); default: detected (faces extra)")
    p.add_argument("--no-pose", action="store_true",
                   help="with --driver or --frames: take the expression only and keep the canonical pose")
    p.add_argument("--frames", default=None, metavar="VIDEO",
                   help="one mesh per frame of this video (or folder of frames): OUT/000000.glb, ...")
    p.add_argument("--frames-landmarks", default=None, metavar="FILE",
                   help="landmarks of every frame of --frames (as animate's --driving-landmarks); default: tracked")
    p.add_argument("--format", choices=_FORMATS, default=None, help="with --frames: the mesh format (default glb)")
    p.add_argument("--no-smooth", action="store_true", help="with --frames: no one-euro smoothing of the landmarks")
    p.add_argument("--fps", type=float, default=None, help="with --frames: frame rate of a folder of frames")
    p.add_argument("--resume", action="store_true",
                   help="with --frames: keep the meshes an interrupted run left in OUT (same arguments only)")
    p.add_argument("--landmarks", default=None, metavar="FILE", help="landmarks of PORTRAIT (as reconstruct's)")
    p.add_argument("--matte", default=None, metavar="PNG", help="8-bit matte of PORTRAIT (255 = head)")
    p.add_argument("--no-matte", action="store_true", help="keep PORTRAIT's background")
    p.add_argument("--face-model", default=None, metavar="PATH",
                   help="the morphable model the avatar was trained with (default: the built-in one)")
    p.add_argument("--recon", default=None, metavar="EPOCH_20.pth",
                   help="Deep3DFaceRecon's checkpoint: regress the coefficients (needs --face-model BFM)")
    p.add_argument("--seed", type=int, default=0, help="seed of the reconstruction's render (default 0)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or notes")
    p.set_defaults(func=run)



# -- evaluate --protocol geometry -----------------------------------------------------------------------------------

_GEOMETRY_KEYS = ("checkpoint", "data", "face_model", "limit", "seed", "resolution", "level", "samples")


def add_geometry_options(p) -> None:
    """The geometry protocol's options, for the ``evaluate`` parser (--resolution, --level, --samples,
    --save-meshes)."""
    from ..eval.geometry import DEFAULT_GEOMETRY_RESOLUTION, DEFAULT_SAMPLES
    from .mesh import DEFAULT_LEVEL

    g = p.add_argument_group("geometry protocol (synthetic data: the exact morphable-model mesh of every sample)")
    g.add_argument("--resolution", type=int, default=DEFAULT_GEOMETRY_RESOLUTION,
                   help=f"export grid points per axis (default {DEFAULT_GEOMETRY_RESOLUTION}: a 2.9 mm voxel)")
    g.add_argument("--level", type=float, nargs="+", default=[DEFAULT_LEVEL], metavar="LEVEL",
                   help=f"iso level(s) on the decoder's raw density, each scored from one grid per source (default "
                        f"{DEFAULT_LEVEL:g})")
    g.add_argument("--samples", type=int, default=DEFAULT_SAMPLES,
                   help=f"query points per surface (default {DEFAULT_SAMPLES})")
    g.add_argument("--save-meshes", action="store_true", help="also write each source's mesh as OUT/meshes/ID.ply")


def evaluate_geometry(a) -> int:
    """``oneshot evaluate --protocol geometry``: OUT/metrics.json, OUT/table.md, OUT/samples.csv (one row per
    source), OUT/samples.jsonl (rows as they finish: --resume continues after them)."""
    import csv
    import json
    import os

    from ..cli_infer import _device
    from ..data import FaceDataset
    from ..eval.geometry import GEOMETRY_METRICS, aggregate_geometry, geometry_sources, geometry_table, run_geometry
    from ..face3d import load_model
    from ..models import OneShotAvatar
    from . import ExportUnavailableError, save_mesh
    from .mesh import require

    data = a.data if isinstance(a.data, (list, tuple)) else [a.data]
    if len(data) != 1 or not (Path(data[0]) / "samples.jsonl").is_file():
        raise ValueError(f"--protocol geometry needs one dataset directory with the exact morphable-model "
                         f"coefficients of its samples (oneshot data synth), got {' '.join(map(str, data))}")
    if not Path(a.checkpoint).is_file():
        raise FileNotFoundError(f"--checkpoint: no such file: {a.checkpoint}")
    levels = a.level if isinstance(a.level, (list, tuple)) else [a.level]
    if a.resolution < 2 or a.samples < 1:
        raise ValueError(f"--resolution must be >= 2 and --samples >= 1, got {a.resolution} and {a.samples}")
    try:
        require("skimage.measure", "trimesh")
    except ExportUnavailableError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {k: getattr(a, k, None) for k in _GEOMETRY_KEYS}
    record.update(level=[float(x) for x in levels], protocol="geometry", checkpoint=str(Path(a.checkpoint).resolve()),
                  data=str(Path(data[0]).resolve()), face_model=None if a.face_model is None else str(Path(a.face_model).resolve()))
    rec_path, rows_path = out / "run.json", out / "samples.jsonl"
    done = []
    if a.resume and rec_path.is_file():
        old = json.loads(rec_path.read_text())
        diff = sorted(k for k in record if old.get(k) != record[k])
        if diff:
            raise ValueError(f"--resume: {out} was written with other arguments ({', '.join(diff)} differ); use "
                             f"another --out or the same arguments")
        if rows_path.is_file():
            done = [json.loads(line) for line in rows_path.read_text().splitlines() if line.strip()]
            count = {}
            for r in done:
                count[r["source"]] = count.get(r["source"], 0) + 1
            done = [r for r in done if count[r["source"]] == len(levels)]  # a source cut off mid-way: again
            rows_path.write_text("".join(json.dumps(r) + "\n" for r in done))
    elif rows_path.exists() and not a.resume:
        raise FileExistsError(f"{out} holds an earlier evaluation (samples.jsonl): pass --resume to continue it, or "
                              f"choose another --out")
    rec_path.write_text(json.dumps(record, indent=1))
    if not done:
        rows_path.write_text("")
    device = _device(a.device)
    face = load_model(a.face_model)
    model = OneShotAvatar.load(a.checkpoint, face).to(device).eval()
    ds = FaceDataset(data[0])
    sources = geometry_sources(ds, limit=a.limit)
    finished = {r["source"] for r in done}
    todo = [s for s in sources if ds.samples[s]["id"] not in finished]
    if done:
        _info(a, f"resuming after {len(finished)} of {len(sources)} sources")

    def append(row):
        with open(rows_path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def keep_mesh(row, mesh):
        name = row["source"] + (f"_level{row['level']:g}" if len(levels) > 1 else "")
        save_mesh(mesh, out / "meshes" / f"{name}.ply", {"source": row["source"]})

    rows = done + run_geometry(model, ds, todo, resolution=a.resolution, level=levels, samples=a.samples,
                               seed=a.seed, device=device, progress=not a.quiet, on_row=append,
                               on_mesh=keep_mesh if a.save_meshes else None)
    summary = {"format": "oneshot-eval", "protocol": "geometry", "checkpoint": str(a.checkpoint), "data": str(data[0]),
               **aggregate_geometry(rows),
               "settings": {"resolution": a.resolution, "levels": levels, "samples": a.samples, "seed": a.seed,
                            "units": "mm of the morphable model's metric scale (370.4 mm per world unit)",
                            "region": "the morphable model's face region",
                            "baseline": "the morphable model's mean face at the sample's pose"}}
    (out / "metrics.json").write_text(json.dumps(summary, indent=1))
    table = geometry_table(summary, f"geometry on {data[0]}")
    (out / "table.md").write_text(table)
    cols = (["source", "identity", "level", "surface", "faces"] + list(GEOMETRY_METRICS)
            + [f"baseline_{m}" for m in GEOMETRY_METRICS])
    with open(out / "samples.csv.tmp", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in rows:
            w.writerow([r[c] for c in cols])
    os.replace(out / "samples.csv.tmp", out / "samples.csv")
    _info(a, table.rstrip())
    print(f"wrote {out / 'metrics.json'}, table.md, samples.csv ({len(sources)} sources, {len(levels)} levels)")
    return 0
