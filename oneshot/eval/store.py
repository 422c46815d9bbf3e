"""Scoring into a folder that survives a crash: every finished batch's rows are appended to ``samples.jsonl`` (and its
Inception features saved to ``features/``) as it completes, so an interrupted evaluation resumes where it stopped
and gives the numbers an uninterrupted one would (renders are deterministic per pair)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .protocol import Scorer, run_protocol

__all__ = ["score_to_folder", "ROWS", "FEATURES"]

ROWS, FEATURES = "samples.jsonl", "features"


def _load_done(out: Path, ds, pairs, scorer: Scorer) -> list[dict]:
    """The rows an earlier run finished, checked against `pairs`; their FID features are put back into `scorer`."""
    rows_path, feat_dir = out / ROWS, out / FEATURES
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
    return done


def score_to_folder(out, model, ds, pairs, scorer: Scorer, protocol: str, *, resume: bool = False, batch: int = 8,
                    seed: int = 0, super_resolve: bool = True, device=None, progress: bool = False,
                    log=None) -> list[dict]:
    """:func:`~oneshot.eval.run_protocol` on `pairs`, each finished batch stored in `out` at once; with `resume`,
    the rows (and features) an earlier run stored there are checked against `pairs` and reused, and only the rest is
    rendered. Returns every row, in pair order."""
    out = Path(out)
    rows_path, feat_dir = out / ROWS, out / FEATURES
    if resume and rows_path.is_file():
        done = _load_done(out, ds, pairs, scorer)
        if log is not None:
            log(f"resuming after {len(done)} of {len(pairs)} pairs")
    else:
        done = []
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

    return done + run_protocol(model, ds, pairs[len(done):], scorer, protocol, batch=batch, seed=seed,
                               super_resolve=super_resolve, device=device, progress=progress, on_batch=on_batch)
