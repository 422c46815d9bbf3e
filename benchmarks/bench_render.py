"""render_triplane (fused sample + decoder + composite, recompute backward) against the composed path the
renderer used before (triplane_sample -> TriplaneDecoder -> ray_march, native kernels), side by side: the whole
EG3D render (coarse pass, importance sampling, final pass) through ``VolumeRenderer`` with ``fused`` off and on,
forward and forward+backward, time and peak memory.

    python benchmarks/bench_render.py [--quick] [--device cpu|cuda]
"""

from __future__ import annotations

import torch

import _harness as H
from oneshot import cameras
from oneshot.models import RenderSettings, TriplaneDecoder, VolumeRenderer
from oneshot.ops import use_fused_render

OP = "render (VolumeRenderer)"


def cases(quick: bool):
    # (label, batch, render resolution, plane size, channels, samples + importance samples)
    yield "tiny: 32^2 rays, 16+16, planes 3x16x64^2", 1, 32, 64, 16, 16
    if not quick:
        yield "paper: 128^2 rays, 48+48, planes 3x32x256^2", 1, 128, 256, 32, 48


def run(device: torch.device, quick: bool, results: list) -> None:
    for label, B, res, P, C, n in cases(quick):
        g = torch.Generator().manual_seed(0)
        planes = (torch.randn(B, 3, C, P, P, generator=g) * 0.5).to(device).requires_grad_()
        torch.manual_seed(0)
        decoder = TriplaneDecoder(C, 64, C).to(device)
        cam = cameras.orbit_labels(B, yaw_range=0.4, pitch_range=0.1).to(device)
        cot = torch.randn(B, C, res, res, generator=g).to(device)
        params = [planes] + list(decoder.parameters())
        providers = [("composed", False)]
        try:
            use_fused_render(True, device=device, dtype=planes.dtype, decoder=decoder)  # raises when it cannot run
            providers.append(("fused", True))
        except RuntimeError as e:
            print(f"  (the fused renderer cannot run here, so only the composed ops are measured: {e})")
        for provider, fused in providers:
            r = VolumeRenderer(RenderSettings(samples=n, importance_samples=n, stratified=False, clip_to_box=True,
                                              fused=fused))
            H.run_fwd_and_fwd_bwd(
                results, OP, label, provider, device,
                lambda: r(planes, decoder, cam, res),
                lambda out: torch.autograd.grad((out.features,), params, (cot,)),
                min_repeats=2, max_repeats=5, budget_s=10.0,
            )


def main(argv=None):
    H.main(run, "render", __doc__, argv, baselines=("composed",), memory=True)


if __name__ == "__main__":
    main()
