"""``oneshot evaluate``: score an avatar checkpoint on a dataset (or on videos and images, prepared first) under one
protocol, and write ``metrics.json``, ``table.md``, ``samples.csv`` and ``grid.png`` (:mod:`oneshot.eval.report`).
Finished batches are stored as they complete (:mod:`oneshot.eval.store`); ``--resume`` continues an interrupted
run with the same arguments."""

from __future__ import annotations

import time
from pathlib import Path

from .geometry import add_geometry_options, check_protocol_flags, geometry_command
from ._common import (add_checkpoint, add_device, add_face_model, add_quiet, add_recon, add_resume, add_seed, add_sr,
                      check_file, info, load_avatar, resolve_device, super_resolve)

__all__ = ["add_parser", "evaluate_command"]

#: The arguments that decide the scores: --resume refuses an OUT written with others.
RUN_KEYS = ("checkpoint", "data", "protocol", "pairs", "max_targets", "limit", "seed", "sr", "ssim", "face_model",
            "recon", "lpips_alexnet", "lpips_heads", "inception", "arcface", "no_faces", "frames")
PATH_KEYS = ("checkpoint", "data", "pairs", "face_model", "recon", "lpips_alexnet", "lpips_heads", "inception",
             "arcface")


def _is_dataset(p: Path) -> bool:
    return p.is_dir() and (p / "samples.jsonl").is_file() and (p / "meta.json").is_file()


def check_args(a) -> None:
    check_file(a.checkpoint, "--checkpoint")
    for name in ("pairs", "face_model", "recon", "lpips_alexnet", "lpips_heads", "inception", "arcface"):
        check_file(getattr(a, name), "--" + name.replace("_", "-"))
    for d in a.data:
        if not Path(d).exists():
            raise FileNotFoundError(f"--data: no such file or directory: {d}")
    for name in ("batch", "frames"):
        if getattr(a, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(a, name)}")
    for name in ("max_targets", "limit"):
        v = getattr(a, name)
        if v is not None and v < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    check_protocol_flags(a)
    if a.pairs is not None and a.protocol != "cross":
        raise ValueError(f"--pairs is for --protocol cross, not {a.protocol}")


def dataset(a, model, out: Path):
    """The dataset to evaluate: --data itself when it is one, else the videos / images prepared into OUT/data
    (resumable)."""
    from ..data import FaceDataset, prepare

    paths = [Path(d) for d in a.data]
    if len(paths) == 1 and _is_dataset(paths[0]):
        return FaceDataset(paths[0]), str(paths[0])
    if any(_is_dataset(p) for p in paths):
        raise ValueError("--data: give one dataset directory, or videos / images / folders of them (not both)")
    from ..face3d.detect import FaceFrontEnd, FacesUnavailableError

    try:  # the front end prepares the sources: say what to install before anything runs
        FaceFrontEnd(max_faces=1).close()
    except FacesUnavailableError as e:
        raise ValueError(f"--data: videos and images are prepared with the face front end ({e}); or give a "
                         f"dataset directory (oneshot data prepare / synth)") from None
    info(a, f"preparing {len(paths)} source(s) into {out / 'data'} (face detection and fit; resumable)")
    rep = prepare([str(p) for p in paths], out / "data", model_path=a.face_model,
                  resolution=model.config.image_size, frames=a.frames, recon_path=a.recon, progress=not a.quiet)
    for line in rep.failed:
        info(a, f"  failed: {line}")
    for src in rep.no_face:
        info(a, f"  no face: {src}")
    return FaceDataset(out / "data"), ", ".join(str(p) for p in paths)


def check_run(a, out: Path, record: dict) -> None:
    """--resume needs the same arguments; without it, an earlier run in OUT is an error; then the record is written."""
    from .._resume import record_differences, write_record
    from ..eval.store import ROWS

    if a.resume:
        diff = record_differences(out / "run.json", record)
        if diff:
            raise ValueError(f"--resume: {out} was written with other arguments ({', '.join(diff)} differ); use "
                             f"another --out or the same arguments")
    elif (out / ROWS).exists():
        raise FileExistsError(f"{out} holds an earlier evaluation ({ROWS}): pass --resume to continue it, or choose "
                              f"another --out")
    write_record(out / "run.json", record)


def evaluate_command(a) -> int:
    from .._resume import resolved_paths
    from ..eval.protocol import aggregate, build_pairs, build_scorer
    from ..eval.report import settings, table_markdown, write_grid, write_reports
    from ..eval.store import score_to_folder

    t0 = time.time()
    check_args(a)
    if a.protocol == "geometry":
        return geometry_command(a)
    device = resolve_device(a.device)
    out = Path(a.out)
    model, face = load_avatar(a.checkpoint, a.face_model, device)
    sr = super_resolve(a, model)
    out.mkdir(parents=True, exist_ok=True)
    check_run(a, out, resolved_paths({k: (sr if k == "sr" else getattr(a, k)) for k in RUN_KEYS}, PATH_KEYS))
    ds, data_name = dataset(a, model, out)
    pairs = build_pairs(ds, a.protocol, pairs_file=a.pairs, max_targets=a.max_targets, limit=a.limit)
    scorer = build_scorer(a.protocol, face, device, lpips_alexnet=a.lpips_alexnet, lpips_heads=a.lpips_heads,
                          inception=a.inception, arcface=a.arcface, faces=not a.no_faces, recon=a.recon, ssim=a.ssim,
                          log=lambda m: info(a, m))
    if a.protocol == "cross" and scorer.arcface is None and scorer.inception is None and scorer.faces is None:
        raise ValueError("cross-identity reenactment has no ground truth: its metrics need --arcface (CSIM), "
                         "--inception (FID) or the faces extra (AED / APD); none is available")
    size = model.config.image_size if sr else model.config.render_resolution
    output = f"{'super-resolved' if sr else 'raw render'} {size}x{size}"
    info(a, f"{a.protocol}: {len(pairs)} pairs from {len(ds.identities)} identities of {data_name}; scoring the "
            f"{output} on {device}")
    rows = score_to_folder(out, model, ds, pairs, scorer, a.protocol, resume=a.resume, batch=a.batch, seed=a.seed,
                           super_resolve=sr, device=device, progress=not a.quiet, log=lambda m: info(a, m))
    metrics = aggregate(rows, a.protocol, scorer)
    if scorer.inception is not None and "fid" not in metrics:
        scorer.skipped["fid"] = f"needs at least 2 pairs (a covariance), got {len(rows)}"
    summary = {"format": "oneshot-eval", "protocol": a.protocol, "checkpoint": str(a.checkpoint), "data": data_name,
               "pairs": len(rows), "identities": len(ds.identities), "output": output, "seed": a.seed,
               "metrics": metrics, "skipped": scorer.skipped,
               "settings": settings(a.protocol, a.ssim, a.recon is not None, face.num_expression),
               "wall_s": round(time.time() - t0, 1)}
    write_reports(out, summary, rows)
    note = write_grid(out, model, ds, pairs, rows, a.protocol, seed=a.seed, super_resolve=sr, device=device)
    if scorer.faces is not None:
        scorer.faces.close()
    info(a, table_markdown(summary).rstrip())
    if note:
        info(a, note)
    info(a, f"wrote {out / 'metrics.json'}, table.md, samples.csv in {time.time() - t0:.0f} s")
    return 0


def add_parser(subparsers) -> None:
    from ..eval.protocol import PROTOCOLS

    p = subparsers.add_parser(
        "evaluate", help="score a checkpoint: reconstruction, self- or cross-identity reenactment",
        description="Render every pair of the protocol and score it with the paper's metrics (L1, PSNR, SSIM, "
                    "LPIPS, FID, CSIM, AED, APD, AKD). Metrics whose weights are not given are skipped with a line "
                    "saying which file they need. Writes OUT/metrics.json, OUT/table.md, OUT/samples.csv, "
                    "OUT/grid.png. --protocol geometry scores exported meshes instead (see its options below).")
    add_checkpoint(p)
    p.add_argument("--data", required=True, nargs="+", metavar="PATH",
                   help="a dataset directory (oneshot data format), or videos / images / folders of them (prepared "
                        "into OUT/data first: each video one identity; needs the faces extra)")
    p.add_argument("--protocol", required=True, choices=PROTOCOLS + ("geometry",),
                   help="reconstruction: each identity's first sample from itself; self: each identity's first "
                        "sample driven by every other sample of the identity; cross: sources driven by other "
                        "identities (--pairs, default each sorted identity by the next); geometry: each identity's "
                        "first sample exported as a mesh and measured against its exact morphable-model mesh "
                        "(synthetic data; the export extra)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (created)")
    p.add_argument("--pairs", default=None, metavar="FILE",
                   help="cross pairs: 'SOURCE DRIVER' per line, sample ids or identity names")
    p.add_argument("--max-targets", type=int, default=None, metavar="N", help="at most N targets per source")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="at most N pairs in all (a quick look)")
    p.add_argument("--frames", type=int, default=16, help="frames sampled from each video when preparing (default 16)")
    add_sr(p, "score")
    p.add_argument("--ssim", choices=("wang", "skimage-default"), default="wang",
                   help="SSIM settings: wang (Gaussian 11 x 11, sigma 1.5, population covariance: scikit-image's match "
                        "to Wang et al.; default) or skimage-default (uniform 7 x 7, sample covariance)")
    p.add_argument("--lpips-alexnet", default=None, metavar="PTH", help="torchvision's alexnet-owt-7be5be79.pth")
    p.add_argument("--lpips-heads", default=None, metavar="PTH",
                   help="the lpips package's weights/v0.1/alex.pth (default: the installed lpips package's)")
    p.add_argument("--inception", default=None, metavar="PTH", help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth")
    p.add_argument("--arcface", default=None, metavar="PTH", help="an insightface arcface_torch backbone.pth")
    add_recon(p, "Deep3DFaceRecon's checkpoint: AED / APD from its regressed coefficients (needs --face-model "
                 "BFM_model_front.mat); default: the 68-landmark fit")
    add_face_model(p, "the morphable model the avatar was trained with (default: the built-in model)")
    p.add_argument("--no-faces", action="store_true", help="skip the landmark metrics (AED, APD, AKD)")
    p.add_argument("--batch", type=int, default=8, help="pairs rendered at once (default 8)")
    add_seed(p, what="the renders")
    add_device(p)
    add_resume(p, "continue an interrupted run in OUT")
    add_quiet(p)
    add_geometry_options(p)
    p.set_defaults(func=evaluate_command)
