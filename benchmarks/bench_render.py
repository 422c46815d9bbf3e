"""render_triplane (fused sample + decoder + composite, recompute backward) against the composed path the
renderer used before (triplane_sample -> TriplaneDecoder -> ray_march, native kernels), side by side: the whole
EG3D render (coarse pass, importance sampling, final pass) through ``VolumeRenderer`` with ``fused`` off and on,
forward and forward+backward, time and peak memory. Then the op itself on one pass's rays, per backend
(reference = the composed pure-PyTorch twin; native = the C++ / CUDA kernel; triton on a GPU).

    python benchmarks/bench_render.py [--quick | --sizes quick|large|all] [--device cpu|cuda] [--out DIR]
"""

from __future__ import annotations

import torch

import _harness as H
from oneshot import cameras, ops
from oneshot.models import RenderSettings, TriplaneDecoder, VolumeRenderer
from oneshot.ops import decoder_weights, has_native_kernel, use_fused_render

OP = "render (VolumeRenderer)"
OP_KERNEL = "render_triplane (op)"


def cases(quick: bool):
    # (label, batch, render resolution, plane size, channels, samples + importance samples)
    yield "tiny: 32^2 rays, 16+16, planes 3x16x64^2", 1, 32, 64, 16, 16
    if not quick:
        yield "paper: 128^2 rays, 48+48, planes 3x32x256^2", 1, 128, 256, 32, 48


def _renderer_run(device, label, B, res, P, C, n, results) -> None:
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
    except (RuntimeError, TypeError) as e:
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


def _op_run(device, label, B, res, P, C, n, results) -> None:
    """render_triplane itself on the final pass's rays (2n samples a ray), every backend of the device."""
    g = torch.Generator().manual_seed(1)
    planes = (torch.randn(B, 3, C, P, P, generator=g) * 0.5).to(device)
    planes = planes.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3).requires_grad_()  # as the renderer
    torch.manual_seed(0)
    w = [x.detach().to(device).requires_grad_() for x in decoder_weights(TriplaneDecoder(C, 64, C))]
    R, S = res * res, 2 * n
    origins = torch.tensor([0.0, 0.0, 2.7]).expand(B, R, 3).contiguous().to(device)
    dirs = torch.nn.functional.normalize(torch.randn(B, R, 3, generator=g) * 0.1 + torch.tensor([0.0, 0.0, -1.0]),
                                         dim=-1).to(device)
    depths = (torch.linspace(2.25, 3.3, S).expand(B, R, S) + torch.rand(B, R, S, generator=g) * 0.01).to(device)
    cot = torch.randn(B, R, C, generator=g).to(device)
    providers = ["reference"] + (["native"] if has_native_kernel("render_triplane", device) else [])
    if device.type == "cuda" and ops.backend_info()["triton"]:
        providers.append("triton")
    case = f"{label.split(':')[0]}: {R} rays x {S}, planes 3x{C}x{P}^2"
    for provider in providers:
        H.run_fwd_and_fwd_bwd(
            results, OP_KERNEL, case, provider, device,
            lambda: ops.render_triplane(planes, origins, dirs, depths, *w, clip_to_box=True, backend=provider),
            lambda out: torch.autograd.grad((out.features,), [planes] + w, (cot,)),
            min_repeats=2, max_repeats=5, budget_s=10.0,
        )


def run(device: torch.device, sizes, results: list) -> None:
    for label, B, res, P, C, n in H.pick(cases, sizes):
        _renderer_run(device, label, B, res, P, C, n, results)
        _op_run(device, label, B, res, P, C, n, results)


def main(argv=None):
    H.main(run, "render", __doc__, argv, baselines=("composed", "reference"), memory=True)


if __name__ == "__main__":
    main()
