"""oneshot.compat.eg3d's drop-in renderer against EG3D's renderer as EG3D writes it (grid_sample, the decoder
module, a cumprod ray marcher: oneshot.compat.eg3d_reference, "composed"), side by side on EG3D's FFHQ training
render: batch 4, planes 3 x 32 x 256^2, OSGDecoder 32 -> 64 -> 33, 48 + 48 samples per ray in [2.25, 3.3], neural
rendering resolution 64^2 and 128^2, stochastic sampling (EG3D's; the same seed for every provider and call).

Modes: fwd (no autograd) and fwd+bwd (gradients of the planes and the decoder's parameters for a random cotangent
on the rgb output). On CUDA the drop-in runs its default (the composed oneshot ops until the fused CUDA kernel is
measured) and, as "drop-in fused", with fused=True.

    python benchmarks/bench_eg3d.py [--sizes quick|large|all] [--device cpu|cuda]
"""

from __future__ import annotations

import torch

import _harness as H
from oneshot import cameras
from oneshot.compat import eg3d
from oneshot.compat.eg3d_reference import ReferenceRenderer
from oneshot.ops import has_native_kernel

OP = "EG3D render (ImportanceRenderer)"

FFHQ = dict(image_resolution=512, disparity_space_sampling=False, clamp_mode="softplus", c_gen_conditioning_zero=False,
            gpc_reg_prob=0.5, c_scale=1.0, superresolution_noise_mode="none", density_reg=0.25,
            density_reg_p_dist=0.004, reg_type="l1", decoder_lr_mul=1.0, sr_antialias=True, depth_resolution=48,
            depth_resolution_importance=48, ray_start=2.25, ray_end=3.3, box_warp=1, avg_camera_radius=2.7,
            avg_camera_pivot=[0, 0, 0.2], superresolution_module="training.superresolution.SuperresolutionHybrid8XDC")


def cases(quick: bool):
    # (label, batch, neural rendering resolution, plane size, channels)
    yield "FFHQ training: batch 4, 64^2 rays, 48+48, planes 3x32x256^2", 4, 64, 256, 32
    if not quick:
        yield "FFHQ training: batch 4, 128^2 rays, 48+48, planes 3x32x256^2", 4, 128, 256, 32


def providers(device: torch.device):
    yield "composed", ReferenceRenderer()
    yield "drop-in", eg3d.ImportanceRenderer()
    if device.type == "cuda" and has_native_kernel("render_triplane", device):
        yield "drop-in fused", eg3d.ImportanceRenderer(fused=True)


def run(device: torch.device, sizes, results: list) -> None:
    for label, B, res, P, C in H.pick(cases, sizes):
        g = torch.Generator().manual_seed(0)
        planes = (torch.randn(B, 3, C, P, P, generator=g) * 0.5).to(device).requires_grad_()
        torch.manual_seed(0)
        decoder = eg3d.OSGDecoder(C, {"decoder_lr_mul": 1, "decoder_output_dim": C}).to(device)
        c2w = cameras.look_at(torch.linspace(-0.4, 0.4, B), torch.linspace(-0.1, 0.1, B)).to(device)
        origins, dirs = eg3d.RaySampler()(c2w, cameras.intrinsics(batch=B).to(device), res)
        cot = torch.randn(B, res * res, C, generator=g).to(device)
        params = [planes] + list(decoder.parameters())
        for provider, renderer in providers(device):
            print(f"  {provider}: {renderer.oneshot_path(planes, decoder, origins, dirs, FFHQ)[1]}"
                  if hasattr(renderer, "oneshot_path") else f"  {provider}: EG3D's code path in plain PyTorch")

            def call(renderer=renderer):
                torch.manual_seed(1)  # EG3D's stochastic sampling, the same draws for every provider
                return renderer(planes, decoder, origins, dirs, FFHQ)

            H.run_fwd_and_fwd_bwd(results, OP, label, provider, device, call,
                                  lambda out: torch.autograd.grad((out[0],), params, (cot,)),
                                  min_repeats=2, max_repeats=5, budget_s=20.0)


def main(argv=None):
    H.main(run, "eg3d", __doc__, argv, baselines=("composed",), memory=True)


if __name__ == "__main__":
    main()
