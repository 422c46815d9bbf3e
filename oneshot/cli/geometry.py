"""``oneshot evaluate --protocol geometry``: each held-out source's exported mesh against the exact morphable-model
mesh of a synthetic dataset (:mod:`oneshot.eval.geometry`). Writes OUT/metrics.json, OUT/table.md, OUT/samples.csv
and, as they finish, OUT/samples.jsonl (``--resume`` continues after the sources it holds)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ._common import info

__all__ = ["add_geometry_options", "check_protocol_flags", "geometry_command", "GEOMETRY_FLAGS", "OTHER_PROTOCOL_FLAGS"]

#: The geometry protocol's own flags (refused with the image protocols), their defaults filled in here.
GEOMETRY_FLAGS = ("resolution", "level", "samples", "save_meshes")
#: The image protocols' flags that mean nothing to the geometry protocol (refused with it).
OTHER_PROTOCOL_FLAGS = ("pairs", "max_targets", "sr", "lpips_alexnet", "lpips_heads", "inception", "arcface", "recon",
                        "no_faces")
RUN_KEYS = ("checkpoint", "data", "face_model", "limit", "seed", "resolution", "level", "samples", "protocol")
PATH_KEYS = ("checkpoint", "data", "face_model")


def add_geometry_options(p: argparse.ArgumentParser) -> None:
    """--resolution, --level, --samples, --save-meshes on the ``evaluate`` parser (default None: unset)."""
    from ..eval.geometry import DEFAULT_GEOMETRY_RESOLUTION, DEFAULT_SAMPLES
    from ..export.mesh import DEFAULT_LEVEL

    g = p.add_argument_group("geometry protocol (synthetic data: the exact morphable-model mesh of every sample)")
    g.add_argument("--resolution", type=int, default=None,
                   help=f"export grid points per axis (default {DEFAULT_GEOMETRY_RESOLUTION}: a 2.9 mm voxel)")
    g.add_argument("--level", type=float, nargs="+", default=None, metavar="LEVEL",
                   help=f"iso level(s) on the decoder's raw density, all scored from one grid per source (default "
                        f"{DEFAULT_LEVEL:g})")
    g.add_argument("--samples", type=int, default=None, help=f"query points per surface (default {DEFAULT_SAMPLES})")
    g.add_argument("--save-meshes", action="store_true", help="also write each source's mesh as OUT/meshes/ID.ply")


def check_protocol_flags(a) -> None:
    """Flags of one kind of protocol given with the other are named, not ignored."""
    geometry = a.protocol == "geometry"
    for name in (OTHER_PROTOCOL_FLAGS if geometry else GEOMETRY_FLAGS):
        v = getattr(a, name, None)
        if v is not None and (v is not False or name == "sr"):  # --no-sr is False, and given
            flag = "--" + name.replace("_", "-")
            if name == "sr":
                flag = "--sr" if a.sr else "--no-sr"
            raise ValueError(f"{flag} is not for --protocol {a.protocol}" +
                             (" (the geometry protocol scores meshes, not images)" if geometry else
                              " (it is the geometry protocol's)"))


def _fill_defaults(a) -> None:
    from ..eval.geometry import DEFAULT_GEOMETRY_RESOLUTION, DEFAULT_SAMPLES
    from ..export.mesh import DEFAULT_LEVEL

    a.resolution = DEFAULT_GEOMETRY_RESOLUTION if a.resolution is None else a.resolution
    a.level = [DEFAULT_LEVEL] if a.level is None else [float(x) for x in a.level]
    a.samples = DEFAULT_SAMPLES if a.samples is None else a.samples
    if a.resolution < 2:
        raise ValueError(f"--resolution must be >= 2, got {a.resolution}")
    if a.samples < 1:
        raise ValueError(f"--samples must be >= 1, got {a.samples}")


def _finished_rows(rows_path: Path, levels: int) -> list[dict]:
    """The rows of sources with every level scored (a source cut off mid-way is scored again); the file is
    rewritten to hold only those."""
    rows = [json.loads(line) for line in rows_path.read_text().splitlines() if line.strip()]
    count: dict[str, int] = {}
    for r in rows:
        count[r["source"]] = count.get(r["source"], 0) + 1
    rows = [r for r in rows if count[r["source"]] == levels]
    tmp = rows_path.with_name(rows_path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, rows_path)
    return rows


def geometry_command(a) -> int:
    """``oneshot evaluate --protocol geometry`` (called by ``evaluate`` after its own checks)."""
    import csv

    from .._resume import record_differences, resolved_paths, write_record
    from ..data import FaceDataset
    from ..eval.geometry import GEOMETRY_METRICS, aggregate_geometry, geometry_sources, geometry_table, run_geometry
    from ..export import save_mesh
    from ..export.mesh import require
    from ._common import load_avatar, resolve_device

    _fill_defaults(a)
    data = list(a.data)
    if len(data) != 1 or not (Path(data[0]) / "samples.jsonl").is_file():
        raise ValueError(f"--protocol geometry needs one dataset directory with the exact morphable-model "
                         f"coefficients of its samples (oneshot data synth), got {' '.join(map(str, data))}")
    try:
        require("skimage.measure", "scipy.spatial", "trimesh")
    except ImportError as e:
        raise ValueError(str(e)) from None
    device = resolve_device(a.device)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    record = resolved_paths({k: getattr(a, k) for k in RUN_KEYS}, PATH_KEYS)
    rec_path, rows_path = out / "run.json", out / "samples.jsonl"
    done: list[dict] = []
    if a.resume:
        diff = record_differences(rec_path, record)
        if diff:
            raise ValueError(f"--resume: {out} was written with other arguments ({', '.join(diff)} differ); use "
                             f"another --out or the same arguments")
        if rows_path.is_file():
            done = _finished_rows(rows_path, len(a.level))
    elif rows_path.exists():
        raise FileExistsError(f"{out} holds an earlier evaluation (samples.jsonl): pass --resume to continue it, or "
                              f"choose another --out")
    write_record(rec_path, record)
    if not done:
        rows_path.write_text("")
    model, _ = load_avatar(a.checkpoint, a.face_model, device)
    ds = FaceDataset(data[0])
    sources = geometry_sources(ds, limit=a.limit)
    finished = {r["source"] for r in done}
    todo = [s for s in sources if ds.samples[s]["id"] not in finished]
    if done:
        info(a, f"resuming after {len(finished)} of {len(sources)} sources")
    info(a, f"geometry: {len(sources)} sources of {data[0]} at {a.resolution}^3, level(s) "
            f"{', '.join(f'{x:g}' for x in a.level)}, on {device}")

    def append(row):
        with open(rows_path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def keep_mesh(row, mesh):
        name = row["source"] + (f"_level{row['level']:g}" if len(a.level) > 1 else "")
        save_mesh(mesh, out / "meshes" / f"{name}.ply", {"source": row["source"]})

    rows = done + run_geometry(model, ds, todo, resolution=a.resolution, level=a.level, samples=a.samples,
                               seed=a.seed, device=device, progress=not a.quiet, on_row=append,
                               on_mesh=keep_mesh if a.save_meshes else None)
    summary = {"format": "oneshot-eval", "protocol": "geometry", "checkpoint": str(a.checkpoint), "data": str(data[0]),
               **aggregate_geometry(rows),
               "settings": {"resolution": a.resolution, "levels": a.level, "samples": a.samples, "seed": a.seed,
                            "units": "mm of the morphable model's metric scale (370.4 mm per world unit)",
                            "region": "the morphable model's face region",
                            "baseline": "the morphable model's mean face at the sample's pose"}}
    write_record(out / "metrics.json", summary)
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
    info(a, table.rstrip())
    print(f"wrote {out / 'metrics.json'}, table.md, samples.csv ({len(sources)} sources, {len(a.level)} level(s))")
    return 0
