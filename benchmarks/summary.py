"""The README's benchmark summary: a few headline rows picked from a results CSV written by run.py.

    python benchmarks/summary.py [benchmarks/results/cpu.csv]
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

# (op, case as written by the bench script, label for the README, mode, baseline provider)
ROWS = [
    ("triplane_sample", "C32 256^2, 128^2 rays x 12 (196K pts)", "planes 3×32×256², 128² rays × 12 (196K points)", "fwd+bwd", "reference"),
    ("triplane_sample", "C32 256^2, 128^2 rays x 12 (196K pts)", "same", "fwd", "reference"),
    ("triplane_sample", "C32 256^2, 128^2 rays x 96 (1.57M pts)", "planes 3×32×256², 128² rays × 96 (1.57M points)", "fwd+bwd", "reference"),
    ("ray_march", "16384 rays x 96 x 32", "16384 rays × 96 samples × 32", "fwd", "reference"),
    ("ray_march", "16384 rays x 96 x 32", "same", "fwd+bwd", "reference"),
    ("ray_march", "50176 rays x 96 x 32 (224^2)", "224² rays × 96 samples × 32", "fwd+bwd", "reference"),
    ("ray_march", "16384 rays x 96 x 3", "16384 rays × 96 samples × 3", "fwd+bwd", "reference"),
    ("rasterize_points", "lifted 128^2 depth -> 3x128^2, C32", "lifted 128² depth map (16384 points) → 3×128², C = 32", "fwd", "ckdtree"),
    ("rasterize_points", "lifted 128^2 depth -> 3x128^2, C32", "same, nearest search only", "index", "ckdtree"),
    ("rasterize_points", "lifted 128^2 depth -> 3x128^2, C32", "same", "fwd", "reference"),
    ("rasterize_points", "uniform 16384 pts -> 3x128^2, C32", "16384 uniform points → 3×128², C = 32", "fwd", "ckdtree"),
    ("rasterize_points", "lifted 128^2 depth -> 3x256^2, C32", "lifted depth map → 3×256², C = 32", "fwd", "ckdtree"),
    ("rasterize_points", "lifted 128^2 depth -> 3x128^2, C256", "lifted depth map → 3×128², C = 256", "fwd", "ckdtree"),
]


def main(path: str = "benchmarks/results/cpu.csv") -> str:
    rows = list(csv.reader(Path(path).open()))
    machine, header = rows[0], rows[1]
    data = {(d["op"], d["case"], d["mode"], d["provider"]): float(d["median_ms"])
            for d in (dict(zip(header, r)) for r in rows[2:])}
    fmt = lambda ms: f"{ms:.1f} ms" if ms < 100 else f"{ms:.0f} ms"  # noqa: E731
    out = [" ".join(m.lstrip("# ") for m in machine), "",
           "| op | case | mode | native | baseline | speed-up |", "|---|---|---|---:|---:|---:|"]
    for op, case, label, mode, base in ROWS:
        n, b = data.get((op, case, mode, "native")), data.get((op, case, mode, base))
        if n is None or b is None:
            continue
        name = "cKDTree" if base == "ckdtree" else base
        out.append(f"| `{op}` | {label} | {mode} | {fmt(n)} | {name} {fmt(b)} | {b / n:.1f}× |")
    return "\n".join(out)


if __name__ == "__main__":
    print(main(*sys.argv[1:]))
