"""triplane_sample: native vs reference (grid_sample, as EG3D), forward and forward+backward.

    python benchmarks/bench_triplane.py [--quick | --sizes quick|large|all] [--device cpu|cuda] [--out DIR]
"""

from __future__ import annotations

import torch

import _harness as H
from _scenes import ray_samples
from oneshot import ops

OP = "triplane_sample"


def cases(quick: bool):
    # (label, C, plane resolution, rays per side, samples per ray)
    yield "C32 64^2, 32^2 rays x 16 (16K pts)", 32, 64, 32, 16
    yield "C32 256^2, 128^2 rays x 12 (196K pts)", 32, 256, 128, 12
    if not quick:
        yield "C32 256^2, 128^2 rays x 96 (1.57M pts)", 32, 256, 128, 96


def providers(device):
    out = ["reference", "native"]
    if ops.backend_info()["triton"] and device.type == "cuda":
        out.append("triton")
    return out


def run(device: torch.device, sizes, results: list) -> None:
    for label, C, res, rays, samples in H.pick(cases, sizes):
        g = torch.Generator().manual_seed(0)
        planes = torch.randn(1, 3, C, res, res, generator=g).to(device).requires_grad_()
        points = ray_samples(rays, samples, device=device).requires_grad_()
        cot = torch.randn(1, points.shape[1], C, generator=g).to(device)
        for provider in providers(device):
            H.run_fwd_and_fwd_bwd(
                results, OP, label, provider, device,
                lambda: ops.triplane_sample(planes, points, backend=provider),
                lambda out: torch.autograd.grad(out, (planes, points), cot),
            )

def main(argv=None):
    H.main(run, "triplane", __doc__, argv)

if __name__ == "__main__":
    main()
