"""``oneshot evaluate``: score an avatar checkpoint on a dataset (or on videos and images, prepared first) under one
protocol, and write ``metrics.json``, ``table.md`` (the paper's column order), ``samples.csv`` (one row per
pair) and ``grid.png`` (best, median and worst samples: source | target | render).

Finished batches are appended to ``samples.jsonl`` (and their Inception features to ``features/``) as they
complete; ``--resume`` continues an interrupted run with the same arguments.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
from pathlib import Path

__all__ = ["add_parser", "evaluate_command", "load_scorer", "write_reports"]

_RUN_KEYS = ("checkpoint", "data", "protocol", "pairs", "max_targets", "limit", "seed", "no_sr", "ssim", "face_model",
             "recon", "lpips_alexnet", "lpips_heads", "inception", "arcface", "no_faces", "frames")


def _info(a, msg: str) -> None:
    if not a.quiet:
        print(msg, file=sys.stderr)


def _is_dataset(p: Path) -> bool:
    return p.is_dir() and (p / "samples.jsonl").is_file() and (p / "meta.json").is_file()


def load_scorer(a, face_model, device, log=print):
    """A :class:`~oneshot.eval.protocol.Scorer` with the networks whose files were given; one line per metric
    that is skipped, saying which file (or extra) it needs."""
    from ..face3d import load_recon_checkpoint
    from ..face3d.detect import faces_available
    from .networks import installed_lpips_heads, load_arcface, load_fid_inception, load_lpips
    from .protocol import COLUMNS, Scorer

    cols = COLUMNS[a.protocol]
    skipped = {}
    lpips = inception = arcface = faces = recon = None
    if "lpips" in cols:
        if a.lpips_alexnet is None:
            skipped["lpips"] = ("needs --lpips-alexnet alexnet-owt-7be5be79.pth (torchvision's AlexNet weights) and the "
                                "lpips heads (--lpips-heads alex.pth, or pip install lpips --no-deps)")
        elif a.lpips_heads is None and installed_lpips_heads() is None:
            skipped["lpips"] = ("needs the lpips linear heads: --lpips-heads weights/v0.1/alex.pth (from the lpips "
                                "package; pip install lpips --no-deps installs them)")
        else:
            lpips = load_lpips(a.lpips_alexnet, a.lpips_heads).to(device)
    if a.inception is None:
        skipped["fid"] = "needs --inception pt_inception-2015-12-05-6726825d.pth (pytorch-fid's FID Inception weights)"
    else:
        inception = load_fid_inception(a.inception).to(device)
    if "csim" in cols:
        if a.arcface is None:
            skipped["csim"] = "needs --arcface backbone.pth (insightface arcface_torch IResNet, e.g. ms1mv3 r100)"
        else:
            arcface = load_arcface(a.arcface).to(device)
    wants_faces = [m for m in ("aed", "apd", "akd") if m in cols]
    if wants_faces:
        if a.no_faces:
            for m in wants_faces:
                skipped[m] = "turned off by --no-faces"
        elif not faces_available():
            for m in wants_faces:
                skipped[m] = "needs the face front end: pip install 'oneshot[faces]'"
        else:
            from ..face3d.detect import FaceFrontEnd

            faces = FaceFrontEnd(max_faces=1)
            if a.recon is not None:
                recon = load_recon_checkpoint(a.recon).to("cpu")
    scorer = Scorer(lpips=lpips, inception=inception, arcface=arcface, faces=faces, face_model=face_model,
                    recon=recon, ssim=a.ssim)
    scorer.skipped = skipped
    for m, why in skipped.items():
        log(f"{m.upper()} skipped: {why}")
    return scorer


def _fmt(m: str, v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if m in ("psnr", "fid"):
        return f"{v:.2f}"
    if m == "akd":
        return f"{v:.3f}"
    return f"{v:.4f}"


def _value(entry: dict) -> float:
    return entry["value"] if "value" in entry else entry["mean"]


def table_markdown(summary: dict) -> str:
    """The metrics as a markdown table in the paper's column order (arrows: better direction)."""
    from .protocol import COLUMNS, LOWER_IS_BETTER, NAMES

    cols = COLUMNS[summary["protocol"]]
    head = "| " + " | ".join(f"{NAMES[m]} {'↓' if m in LOWER_IS_BETTER else '↑'}" for m in cols) + " |"
    vals = []
    for m in cols:
        e = summary["metrics"].get(m)
        vals.append(_fmt(m, _value(e)) if e is not None else "–")
    lines = [f"**{summary['protocol']}** on {summary['data']} ({summary['pairs']} pairs, {summary['output']})", "",
             head, "|" + "---:|" * len(cols), "| " + " | ".join(vals) + " |"]
    if summary.get("skipped"):
        lines += [""] + [f"- {NAMES[m]} skipped: {why}" for m, why in summary["skipped"].items()]
    missing = {m: e["missing"] for m, e in summary["metrics"].items() if e.get("missing")}
    if missing:
        lines += [""] + [f"- {NAMES[m]}: no face found in {k} of the pairs (left out of the mean)"
                         for m, k in missing.items()]
    return "\n".join(lines) + "\n"


def write_reports(out: Path, summary: dict, rows: list[dict]) -> None:
    from .protocol import COLUMNS

    (out / "metrics.json").write_text(json.dumps(summary, indent=1))
    (out / "table.md").write_text(table_markdown(summary))
    cols = [m for m in COLUMNS[summary["protocol"]] if any(m in r for r in rows)]
    with open(out / "samples.csv.tmp", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["source", "target", "identity"] + cols)
        for r in rows:
            w.writerow([r["source"], r["target"], r["identity"]] + [repr(r[m]) if m in r else "" for m in cols])
    os.replace(out / "samples.csv.tmp", out / "samples.csv")


def _ranked(rows: list[dict], protocol: str) -> tuple[str, list[int]] | None:
    """(metric, row indices best first) by the first available of PSNR, CSIM, LPIPS, AED."""
    from .protocol import LOWER_IS_BETTER

    for m in (("psnr", "lpips", "csim", "aed") if protocol != "cross" else ("csim", "aed", "apd")):
        idx = [i for i, r in enumerate(rows) if m in r and not math.isnan(r[m])]
        if idx:
            return m, sorted(idx, key=lambda i: rows[i][m], reverse=m not in LOWER_IS_BETTER)
    return None


def _write_grid(out: Path, model, ds, pairs, rows, a, device, per: int = 2) -> str | None:
    """grid.png: rows best, median, worst (`per` each): source | target (driver) | render, at 128 px."""
    import torch
    import torch.nn.functional as F

    from ..imageio import write_png
    from ..train.data import collate_pairs
    from ..train.report import image_grid
    from .protocol import deterministic_renders

    ranked = _ranked(rows, a.protocol)
    if ranked is None:
        return None
    metric, order = ranked
    n = len(order)
    mid = n // 2
    pick = order[:per] + order[max(0, mid - per // 2):max(0, mid - per // 2) + per] + order[-per:]
    show = 128
    grid_rows = []
    with torch.no_grad(), deterministic_renders(model):
        for i in pick:
            b = collate_pairs(ds, [pairs[i]], model.face_model, device=device)
            o = model(b, seed=a.seed, super_resolve=not a.no_sr)
            img = (o["image"] if not a.no_sr else o["full"].features[:, :3]).float().clamp(-1, 1)

            def fit(x):
                return F.interpolate(x.float().cpu(), size=(show, show), mode="bilinear", align_corners=False,
                                     antialias=x.shape[-1] > show)[0]
            grid_rows.append([fit(b["source_image"]), fit(b["target_image"]), fit(img)])
    write_png(out / "grid.png", image_grid(grid_rows))
    return (f"grid.png: rows {per} best, {per} median, {per} worst by {metric}; columns source | target "
            f"{'(driver) ' if a.protocol == 'cross' else ''}| render")


def _run_record(a) -> dict:
    rec = {k: getattr(a, k) for k in _RUN_KEYS}
    for k in ("checkpoint", "pairs", "face_model", "recon", "lpips_alexnet", "lpips_heads", "inception", "arcface"):
        if rec[k] is not None:
            rec[k] = str(Path(rec[k]).resolve())
    rec["data"] = [str(Path(d).resolve()) for d in a.data]
    return rec


def _check_args(a) -> None:
    if not Path(a.checkpoint).is_file():
        raise FileNotFoundError(f"--checkpoint: no such file: {a.checkpoint}")
    for name in ("pairs", "face_model", "recon", "lpips_alexnet", "lpips_heads", "inception", "arcface"):
        v = getattr(a, name)
        if v is not None and not Path(v).is_file():
            raise FileNotFoundError(f"--{name.replace('_', '-')}: no such file: {v}")
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
    if a.pairs is not None and a.protocol != "cross":
        raise ValueError(f"--pairs is for --protocol cross, not {a.protocol}")


def _dataset(a, model, out: Path):
    """The dataset to evaluate: --data itself when it is one, else the videos / images prepared into
    OUT/data (resumable)."""
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
    _info(a, f"preparing {len(paths)} source(s) into {out / 'data'} (face detection and fit; resumable)")
    rep = prepare([str(p) for p in paths], out / "data", model_path=a.face_model,
                  resolution=model.config.image_size, frames=a.frames, recon_path=a.recon, progress=not a.quiet)
    for line in rep.failed:
        _info(a, f"  failed: {line}")
    for src in rep.no_face:
        _info(a, f"  no face: {src}")
    return FaceDataset(out / "data"), ", ".join(str(p) for p in paths)


def evaluate_command(a) -> int:
    import torch

    from ..cli_infer import _device
    from ..face3d import load_model
    from ..models import OneShotAvatar
    from .protocol import SSIM_SETTINGS, aggregate, build_pairs, run_protocol

    t0 = time.time()
    _check_args(a)
    device = _device(a.device)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    record = _run_record(a)
    rec_path, rows_path, feat_dir = out / "run.json", out / "samples.jsonl", out / "features"
    if a.resume and rec_path.is_file():
        old = json.loads(rec_path.read_text())
        diff = sorted(k for k in record if old.get(k) != record[k])
        if diff:
            raise ValueError(f"--resume: {out} was written with other arguments ({', '.join(diff)} differ); use "
                             f"another --out or the same arguments")
    elif rows_path.exists() and not a.resume:
        raise FileExistsError(f"{out} holds an earlier evaluation (samples.jsonl): pass --resume to continue it, or "
                              f"choose another --out")
    rec_path.write_text(json.dumps(record, indent=1))

    face = load_model(a.face_model)
    try:
        model = OneShotAvatar.load(a.checkpoint, face).to(device).eval()
    except ValueError as e:
        if "built for morphable model" in str(e):
            raise ValueError(f"{a.checkpoint}: {e}; pass --face-model with the morphable model it was trained "
                             f"with") from None
        raise
    ds, data_name = _dataset(a, model, out)
    pairs = build_pairs(ds, a.protocol, pairs_file=a.pairs, max_targets=a.max_targets, limit=a.limit)
    scorer = load_scorer(a, face, device, log=lambda m: _info(a, m))
    if a.protocol == "cross" and scorer.arcface is None and scorer.inception is None and scorer.faces is None:
        raise ValueError("cross-identity reenactment has no ground truth: its metrics need --arcface (CSIM), "
                         "--inception (FID) or the faces extra (AED / APD); none is available")

    done: list[dict] = []
    if a.resume and rows_path.is_file():
        done = [json.loads(line) for line in rows_path.read_text().splitlines() if line.strip()]
        for k, r in enumerate(done):
            s, t = pairs[k] if k < len(pairs) else (None, None)
            if s is None or (r["source"], r["target"]) != (ds.samples[s]["id"], ds.samples[t]["id"]):
                raise ValueError(f"--resume: {rows_path} line {k + 1} is not pair {k} of this protocol")
        if scorer.inception is not None:
            for f in sorted(feat_dir.glob("*.pt")):
                d = torch.load(f, weights_only=True)
                scorer.fake_features.append(d["fake"])
                scorer.real_features.append(d["real"])
            if sum(x.shape[0] for x in scorer.fake_features) != len(done):
                raise ValueError(f"--resume: {feat_dir} does not hold the features of the {len(done)} finished pairs")
        _info(a, f"resuming after {len(done)} of {len(pairs)} pairs")
    else:
        rows_path.write_text("")
        for f in feat_dir.glob("*.pt"):
            f.unlink()

    n_done = len(done)

    def on_batch(new_rows, renders, chunk):
        nonlocal n_done
        if scorer.inception is not None:
            feat_dir.mkdir(exist_ok=True)
            tmp = feat_dir / f".{n_done:08d}.tmp"
            torch.save({"fake": scorer.fake_features[-1], "real": scorer.real_features[-1]}, tmp)
            os.replace(tmp, feat_dir / f"{n_done:08d}.pt")
        with open(rows_path, "a") as f:
            for r in new_rows:
                f.write(json.dumps(r) + "\n")
            f.flush()
            os.fsync(f.fileno())
        n_done += len(new_rows)

    output = (f"super-resolved {model.config.image_size}x{model.config.image_size}" if not a.no_sr else
              f"raw render {model.config.render_resolution}x{model.config.render_resolution}")
    _info(a, f"{a.protocol}: {len(pairs)} pairs from {len(ds.identities)} identities of {data_name}; scoring the "
             f"{output} on {device}")
    rows = done + run_protocol(model, ds, pairs[len(done):], scorer, a.protocol, batch=a.batch, seed=a.seed,
                               super_resolve=not a.no_sr, device=device, progress=not a.quiet, on_batch=on_batch)
    metrics = aggregate(rows, a.protocol, scorer)
    if scorer.inception is not None and "fid" not in metrics:
        scorer.skipped["fid"] = f"needs at least 2 pairs (a covariance), got {len(rows)}"
    summary = {"format": "oneshot-eval", "protocol": a.protocol, "checkpoint": str(a.checkpoint), "data": data_name,
               "pairs": len(rows), "identities": len(ds.identities), "output": output, "seed": a.seed,
               "metrics": metrics, "skipped": scorer.skipped,
               "settings": {
                   "images": "[0, 1]; targets matted and resized (bilinear, antialiased) to the output size",
                   "ssim": f"skimage structural_similarity, channel_axis, data_range 1, {a.ssim}: "
                           + ", ".join(f"{k}={v}" for k, v in SSIM_SETTINGS[a.ssim].items()),
                   "lpips": "v0.1, AlexNet, inputs [-1, 1]", "fid": "pytorch-fid Inception pool3 (2048), renders "
                   "vs " + ("sources" if a.protocol == "cross" else "targets"),
                   "csim": "ArcFace cosine, 112 crops from the canonical framing, against the "
                           + ("source" if a.protocol == "cross" else "target"),
                   "aed": "mean |expression coefficients| difference (" + ("Deep3DFaceRecon regression"
                          if a.recon else "68-landmark fit") + f", {face.num_expression} modes)",
                   "apd": "mean |pose| difference over rotation (3 Euler angles, radians) and translation (3, "
                          "Deep3DFaceRecon units)",
                   "akd": "mean distance of the 68 detected landmarks, pixels of a 256 x 256 frame",
                   "renders": "stratified=False (evenly spaced samples), seeded"},
               "wall_s": round(time.time() - t0, 1)}
    write_reports(out, summary, rows)
    note = _write_grid(out, model, ds, pairs, rows, a, device)
    if scorer.faces is not None:
        scorer.faces.close()
    _info(a, table_markdown(summary).rstrip())
    if note:
        _info(a, note)
    _info(a, f"wrote {out / 'metrics.json'}, table.md, samples.csv in {time.time() - t0:.0f} s")
    return 0


def add_parser(subparsers) -> None:
    from .protocol import PROTOCOLS

    p = subparsers.add_parser(
        "evaluate", help="score a checkpoint: reconstruction, self- or cross-identity reenactment",
        description="Render every pair of the protocol and score it with the paper's metrics (L1, PSNR, SSIM, "
                    "LPIPS, FID, CSIM, AED, APD, AKD). Metrics whose weights are not given are skipped with a line "
                    "saying which file they need. Writes OUT/metrics.json, OUT/table.md, OUT/samples.csv, "
                    "OUT/grid.png.")
    p.add_argument("--checkpoint", required=True, help="the avatar (.safetensors written by OneShotAvatar.save)")
    p.add_argument("--data", required=True, nargs="+", metavar="PATH",
                   help="a dataset directory (oneshot data format), or videos / images / folders of them (prepared "
                        "into OUT/data first: each video one identity; needs the faces extra)")
    p.add_argument("--protocol", required=True, choices=PROTOCOLS,
                   help="reconstruction: each identity's first sample from itself; self: each identity's first "
                        "sample driven by every other sample of the identity; cross: sources driven by other "
                        "identities (--pairs, default each sorted identity by the next)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (created)")
    p.add_argument("--pairs", default=None, metavar="FILE",
                   help="cross pairs: 'SOURCE DRIVER' per line, sample ids or identity names")
    p.add_argument("--max-targets", type=int, default=None, metavar="N", help="at most N targets per source")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="at most N pairs in all (a quick look)")
    p.add_argument("--frames", type=int, default=16, help="frames sampled from each video when preparing (default 16)")
    p.add_argument("--no-sr", action="store_true", help="score the raw render (its RGB features), not the SR output")
    p.add_argument("--ssim", choices=("wang", "skimage-default"), default="wang",
                   help="SSIM settings: wang (Gaussian 11 x 11, sigma 1.5, population covariance: scikit-image's match "
                        "to Wang et al.; default) or skimage-default (uniform 7 x 7, sample covariance)")
    p.add_argument("--lpips-alexnet", default=None, metavar="PTH", help="torchvision's alexnet-owt-7be5be79.pth")
    p.add_argument("--lpips-heads", default=None, metavar="PTH",
                   help="the lpips package's weights/v0.1/alex.pth (default: the installed lpips package's)")
    p.add_argument("--inception", default=None, metavar="PTH", help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth")
    p.add_argument("--arcface", default=None, metavar="PTH", help="an insightface arcface_torch backbone.pth")
    p.add_argument("--recon", default=None, metavar="EPOCH_20.pth",
                   help="Deep3DFaceRecon's checkpoint: AED / APD from its regressed coefficients (needs --face-model "
                        "BFM_model_front.mat); default: the 68-landmark fit")
    p.add_argument("--face-model", default=None, metavar="PATH",
                   help="the morphable model the avatar was trained with (default: the built-in model)")
    p.add_argument("--no-faces", action="store_true", help="skip the landmark metrics (AED, APD, AKD)")
    p.add_argument("--batch", type=int, default=8, help="pairs rendered at once (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the renders (default 0)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in OUT (same arguments)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or notes")
    p.set_defaults(func=evaluate_command)

