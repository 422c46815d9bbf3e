"""ray_march: native vs reference (EG3D's vectorised MipRayMarcher2), forward and forward+backward.

    python benchmarks/bench_raymarch.py [--quick | --sizes quick|large|all] [--device cpu|cuda] [--out DIR]
"""

from __future__ import annotations

import torch

import _harness as H
from oneshot import ops

OP = "ray_march"


def cases(quick: bool):
    # (label, rays, samples, channels)
    yield "4096 rays x 48 x 32", 4096, 48, 32
    yield "16384 rays x 96 x 32", 16384, 96, 32
    if not quick:
        yield "16384 rays x 96 x 3", 16384, 96, 3
        yield "50176 rays x 96 x 32 (224^2)", 224 * 224, 96, 32


def run(device: torch.device, sizes, results: list) -> None:
    for label, R, S, C in H.pick(cases, sizes):
        g = torch.Generator().manual_seed(0)
        colors = torch.rand(R, S, C, generator=g).to(device).requires_grad_()
        densities = (torch.randn(R, S, generator=g) * 4).to(device).requires_grad_()
        base = torch.linspace(2.25, 3.3, S)
        depths = (base + torch.rand(R, S, generator=g) * (1.05 / S)).to(device)
        cots = (torch.randn(R, C, generator=g).to(device), torch.randn(R, generator=g).to(device))
        providers = ["reference", "native"] + (["triton"] if ops.backend_info()["triton"] and device.type == "cuda" else [])
        for provider in providers:
            H.run_fwd_and_fwd_bwd(
                results, OP, label, provider, device,
                lambda: ops.ray_march(colors, densities, depths, backend=provider),
                lambda out: torch.autograd.grad((out.features, out.depth), (colors, densities), cots),
            )

def main(argv=None):
    H.main(run, "raymarch", __doc__, argv)

if __name__ == "__main__":
    main()
