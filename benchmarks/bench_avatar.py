"""OneShotAvatar inference per preset: reconstruct a source once, then animate frames (one at a time, with the
super-resolution), time and peak memory. Providers: the model on oneshot's native ops ("native") against the
same model on the pure-PyTorch reference ops ("reference"), in the same run; weights are random (speed does not
depend on them).

    python benchmarks/bench_avatar.py [--quick | --sizes quick|large|all] [--device cpu|cuda] [--out DIR]
                                      [--presets tiny paper goha-release]

--quick: the "tiny" preset only (the full-size presets take seconds per frame on a CPU); --sizes large: the
others.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import _harness as H
from oneshot import cameras
from oneshot.face3d import Coeffs, builtin_model
from oneshot.models import OneShotAvatar

OP = "avatar"


def _inputs(model: OneShotAvatar, device):
    S = model.config.image_size
    g = torch.Generator().manual_seed(0)
    face = model.face_model
    c = Coeffs.zeros(face, 1)
    c.identity = torch.randn(1, face.num_identity, generator=g) * 0.5
    target = Coeffs.zeros(face, 1)
    target.expression = torch.rand(1, face.num_expression, generator=g)
    image = (torch.rand(1, 3, S, S, generator=g) * 2 - 1).to(device)
    return image, cameras.frontal_label().to(device), c.to(device), target.to(device), \
        cameras.orbit_labels(8)[2:3].to(device)


PRESETS = ["tiny", "paper", "goha-release"]


def cases(quick: bool):
    return PRESETS[:1] if quick else PRESETS


def run(device: torch.device, sizes, results: list, presets=None) -> None:
    presets = presets or H.pick(cases, sizes)
    face = builtin_model()
    for preset in presets:
        torch.manual_seed(0)
        model = OneShotAvatar(preset, face).eval().to(device)
        image, src_cam, src, tgt, tgt_cam = _inputs(model, device)
        c = model.config
        case = (f"{preset}: {c.image_size}^2 in, planes 3x{c.plane_channels}x{c.plane_size}^2, render "
                f"{c.render_resolution}^2, SR {c.sr_out_size}^2")
        budget = {"min_repeats": 2, "max_repeats": 10, "budget_s": 6.0} if preset != "tiny" else {}
        for provider in ("reference", "native"):
            model.renderer.backend = provider

            def reconstruct():
                with torch.no_grad():
                    model.reconstruct(image, src_cam, src)

            with torch.no_grad():
                avatar = model.reconstruct(image, src_cam, src)

            def animate():
                with torch.no_grad():
                    model.animate(avatar, tgt, tgt_cam)

            def animate_low_res():
                with torch.no_grad():
                    model.animate(avatar, tgt, tgt_cam, super_resolve=False)

            H.run_case(results, OP, case, "reconstruct", provider, reconstruct, device, **budget)
            H.run_case(results, OP, case, "frame", provider, animate, device, **budget)
            H.run_case(results, OP, case, "frame-no-SR", provider, animate_low_res, device, **budget)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    H.add_arguments(p, "avatar")
    p.add_argument("--presets", nargs="+", default=None, choices=PRESETS)
    a = p.parse_args(argv)
    device = H.device_arg(a.device)
    results: list = []
    run(device, H.sizes_arg(a), results, a.presets)
    print(*H.write(results, a.name or f"avatar_{device.type}", Path(a.out)), sep="\n")


if __name__ == "__main__":
    main()
