"""Run every kernel benchmark and write benchmarks/results/<device>.csv and .md (machine, versions, date).

    python benchmarks/run.py [--quick] [--device cpu|cuda] [--ops triplane raymarch raster mesh]

Speed-ups are against the reference implementation measured in the same run (and against scipy's cKDTree for
rasterize_points on CPU). Correctness is the tests' job (tests/); this only times.
"""

from __future__ import annotations

import argparse

import _harness as H
import bench_mesh
import bench_raster
import bench_raymarch
import bench_triplane

BENCHES = {"triplane": bench_triplane, "raymarch": bench_raymarch, "raster": bench_raster, "mesh": bench_mesh}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="skip the largest sizes")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--ops", nargs="+", default=list(BENCHES), choices=list(BENCHES))
    p.add_argument("--name", default=None, help="results file stem (default: the device type)")
    a = p.parse_args(argv)
    device = H.device_arg(a.device)
    print(f"oneshot benchmarks on {device}: " + ", ".join(f"{k} {v}" for k, v in H.machine().items()), flush=True)
    results = []
    for name in a.ops:
        BENCHES[name].run(device, a.quick, results)
    csv_path, md_path = H.write(results, a.name or device.type)
    print(f"wrote {csv_path}\nwrote {md_path}")
    print(md_path.read_text())


if __name__ == "__main__":
    main()
