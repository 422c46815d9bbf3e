"""ray_march: native vs reference (EG3D's vectorised MipRayMarcher2), forward and forward+backward.

    python benchmarks/bench_raymarch.py [--quick] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import _harness as H  # noqa: E402
from oneshot import ops  # noqa: E402

OP = "ray_march"


def cases(quick: bool):
    # (label, rays, samples, channels)
    yield "4096 rays x 48 x 32", 4096, 48, 32
    yield "16384 rays x 96 x 32", 16384, 96, 32
    if not quick:
        yield "16384 rays x 96 x 3", 16384, 96, 3
        yield "50176 rays x 96 x 32 (224^2)", 224 * 224, 96, 32


def run(device: torch.device, quick: bool, results: list) -> None:
    for label, R, S, C in cases(quick):
        g = torch.Generator().manual_seed(0)
        colors = torch.rand(R, S, C, generator=g).to(device).requires_grad_()
        densities = (torch.randn(R, S, generator=g) * 4).to(device).requires_grad_()
        base = torch.linspace(2.25, 3.3, S)
        depths = (base + torch.rand(R, S, generator=g) * (1.05 / S)).to(device)
        cots = (torch.randn(R, C, generator=g).to(device), torch.randn(R, generator=g).to(device))
        providers = ["reference", "native"] + (["triton"] if ops.backend_info()["triton"] and device.type == "cuda" else [])
        for provider in providers:
            def fwd():
                with torch.no_grad():
                    ops.ray_march(colors, densities, depths, backend=provider)
                H.sync(device)

            def fwd_bwd():
                out = ops.ray_march(colors, densities, depths, backend=provider)
                torch.autograd.grad((out.features, out.depth), (colors, densities), cots)
                H.sync(device)

            H.run_case(results, OP, label, "fwd", provider, fwd, device)
            H.run_case(results, OP, label, "fwd+bwd", provider, fwd_bwd, device)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="skip the largest sizes")
    p.add_argument("--device", default=None)
    p.add_argument("--name", default=None)
    a = p.parse_args(argv)
    device = H.device_arg(a.device)
    results = []
    run(device, a.quick, results)
    print(*H.write(results, a.name or f"raymarch_{device.type}"), sep="\n")


if __name__ == "__main__":
    main()
