"""Run the kernel benchmarks and write benchmarks/results/<device>.csv and .md (machine, versions, date).

    python benchmarks/run.py [--quick | --sizes quick|large|all] [--device cpu|cuda] [--out DIR] [--name STEM]
                             [--ops triplane raymarch raster mesh render eg3d avatar export]

Speed-ups are against the reference implementation measured in the same run (and against scipy's cKDTree for
rasterize_points on CPU). The results are written after each op, so an interrupted run keeps the ops it
finished: the kernel ops cumulatively in <STEM>.csv/.md; ``render`` (fused vs composed renderer), ``avatar``
(the whole model per preset, native vs reference ops) and ``export`` (the mesh export's density grid and whole
export) in <STEM>_<op>.csv/.md. An op whose benchmark fails (or whose script cannot be imported, e.g. avatar
without transformers) is reported and the others still run (exit status 1 at the end). Correctness is the tests'
job (tests/); this only times.
"""

from __future__ import annotations

import argparse
import importlib
import time
import traceback
from pathlib import Path

import _harness as H

BENCHES = ["triplane", "raymarch", "raster", "mesh", "render", "eg3d", "avatar", "export"]  # benchmarks/bench_<op>.py
DEFAULT_OPS = ["triplane", "raymarch", "raster", "mesh"]
OWN_FILE = {"render": dict(baselines=("composed", "reference"), memory=True),  # written apart, with these baselines
            "eg3d": dict(baselines=("composed",), memory=True),
            "avatar": dict(baselines=("reference",)),
            "export": dict(baselines=("reference", "composed"), memory=True)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    H.add_arguments(p, "<device>")
    p.add_argument("--ops", nargs="+", default=DEFAULT_OPS, choices=BENCHES)
    a = p.parse_args(argv)
    device = H.device_arg(a.device)
    sizes, out, stem = H.sizes_arg(a), Path(a.out), a.name or device.type
    print(f"oneshot benchmarks on {device} ({sizes} sizes): " + ", ".join(f"{k} {v}" for k, v in H.machine().items()),
          flush=True)
    results, failed = [], []
    for name in a.ops:
        start = time.perf_counter()
        mine: list = []
        try:
            importlib.import_module(f"bench_{name}").run(device, sizes, mine)
        except Exception:  # e.g. a kernel that fails to build: report it, keep what was measured, go on
            traceback.print_exc()
            failed.append(name)
        if name in OWN_FILE:
            paths = H.write(mine, f"{stem}_{name}", out, **OWN_FILE[name]) if mine else ()
        else:
            results += mine
            paths = H.write(results, stem, out) if results else ()
        print(f"== {name}: {len(mine)} measurements in {time.perf_counter() - start:.0f} s"
              + (" (FAILED)" if name in failed else "") + "".join(f"\nwrote {q}" for q in paths), flush=True)
    if failed:
        print(f"failed: {' '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
