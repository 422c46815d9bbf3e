"""An evaluation's reports: ``metrics.json`` (the summary with its pinned settings), ``table.md`` (the paper's column
order, arrows for the better direction), ``samples.csv`` (one row per pair) and ``grid.png`` (best, median and worst
pairs)."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data import collate_pairs
from ..imageio import image_grid, write_png
from .protocol import COLUMNS, LOWER_IS_BETTER, NAMES, SSIM_SETTINGS, deterministic_renders

__all__ = ["table_markdown", "write_reports", "ranked", "write_grid", "settings"]


def settings(protocol: str, ssim_setting: str, regressed: bool, num_expression: int) -> dict:
    """The pinned choices behind each metric, as stored in metrics.json."""
    return {
        "images": "[0, 1]; targets matted and resized (bilinear, antialiased) to the output size",
        "ssim": f"skimage structural_similarity, channel_axis, data_range 1, {ssim_setting}: "
                + ", ".join(f"{k}={v}" for k, v in SSIM_SETTINGS[ssim_setting].items()),
        "lpips": "v0.1, AlexNet, inputs [-1, 1]",
        "fid": "pytorch-fid Inception pool3 (2048), renders vs " + ("sources" if protocol == "cross" else "targets"),
        "csim": "ArcFace cosine, 112 crops from the canonical framing, against the "
                + ("source" if protocol == "cross" else "target"),
        "aed": "mean |expression coefficients| difference (" + ("Deep3DFaceRecon regression" if regressed
                                                              else "68-landmark fit") + f", {num_expression} modes)",
        "apd": "mean |pose| difference over rotation (3 Euler angles, radians) and translation (3, Deep3DFaceRecon "
               "units)",
        "akd": "mean distance of the 68 detected landmarks, pixels of a 256 x 256 frame",
        "renders": "stratified=False (evenly spaced samples), seeded"}


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
    (out / "metrics.json").write_text(json.dumps(summary, indent=1))
    (out / "table.md").write_text(table_markdown(summary))
    cols = [m for m in COLUMNS[summary["protocol"]] if any(m in r for r in rows)]
    with open(out / "samples.csv.tmp", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["source", "target", "identity"] + cols)
        for r in rows:
            w.writerow([r["source"], r["target"], r["identity"]] + [repr(r[m]) if m in r else "" for m in cols])
    os.replace(out / "samples.csv.tmp", out / "samples.csv")


def ranked(rows: list[dict], protocol: str) -> tuple[str, list[int]] | None:
    """(metric, row indices best first) by the first available of PSNR, CSIM, LPIPS, AED."""
    for m in (("psnr", "lpips", "csim", "aed") if protocol != "cross" else ("csim", "aed", "apd")):
        idx = [i for i, r in enumerate(rows) if m in r and not math.isnan(r[m])]
        if idx:
            return m, sorted(idx, key=lambda i: rows[i][m], reverse=m not in LOWER_IS_BETTER)
    return None


def write_grid(out: Path, model, ds, pairs, rows, protocol: str, *, seed: int = 0, super_resolve: bool = True,
               device=None, per: int = 2) -> str | None:
    """grid.png: rows best, median, worst (`per` each): source | target (driver) | render, at 128 px."""
    ranking = ranked(rows, protocol)
    if ranking is None:
        return None
    metric, order = ranking
    n = len(order)
    mid = n // 2
    pick = order[:per] + order[max(0, mid - per // 2):max(0, mid - per // 2) + per] + order[-per:]
    show = 128
    grid_rows = []
    with torch.no_grad(), deterministic_renders(model):
        for i in pick:
            b = collate_pairs(ds, [pairs[i]], model.face_model, device=device)
            o = model(b, seed=seed, super_resolve=super_resolve)
            img = (o["image"] if super_resolve else o["full"].features[:, :3]).float().clamp(-1, 1)

            def fit(x):
                return F.interpolate(x.float().cpu(), size=(show, show), mode="bilinear", align_corners=False,
                                     antialias=x.shape[-1] > show)[0]
            grid_rows.append([fit(b["source_image"]), fit(b["target_image"]), fit(img)])
    write_png(out / "grid.png", image_grid(grid_rows))
    return (f"grid.png: rows {per} best, {per} median, {per} worst by {metric}; columns source | target "
            f"{'(driver) ' if protocol == 'cross' else ''}| render")
