"""Why the Triton render kernel's decoder products are 3xTF32 and not plain TF32: render_triplane's reference with
its two linear layers computed as a tensor core would (operands rounded to TF32, float32 accumulation), plain or
split three ways, against float64, on a scene with the paper decoder's widths (C = 32, hidden 64, Co = 32).
A CPU emulation (TF32 = float32 rounded to nearest even at 10 mantissa bits); no GPU needed.

    python benchmarks/tf32_precision.py [--out DIR]

Writes tf32_precision.md: the largest error of each output and, relative to the largest gradient, of each
gradient (the forward's products rounded; the backward's own products stay float32, so plain TF32's gradient
error is if anything larger on a GPU).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import _harness as H

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_render_triplane import _scene  # noqa: E402  (the tests' scene builder)

from oneshot.ops.render import reference_render_triplane  # noqa: E402

OUTPUTS = ("features", "depth", "opacity", "weights")
_LINEAR = F.linear
GRADS = ("planes", "w1", "b1", "w2", "b2")


def tf32(x: torch.Tensor) -> torch.Tensor:
    """x rounded to TF32 (float32 with 10 mantissa bits, nearest even), with an identity gradient."""
    x = x.float()
    bits = x.detach().contiguous().view(torch.int32)
    rounded = ((bits + 0xFFF + ((bits >> 13) & 1)) & ~0x1FFF).view(torch.float32)
    return x + (rounded - x).detach()


def linear(mode: str):
    def f(x, w, b):
        if mode == "float64":
            return _LINEAR(x.double(), w.double(), b.double())
        x, w = x.float(), w.float()
        if mode == "tf32":
            y = tf32(x) @ tf32(w).T
        elif mode == "tf32x3":  # hi*hi + (hi*lo + lo*hi): the lo*lo term is below float32's rounding
            xh, wh = tf32(x), tf32(w)
            xl, wl = tf32(x - xh), tf32(w - wh)
            y = xh @ wh.T + (xh @ wl.T + xl @ wh.T)
        else:
            y = x @ w.T
        return y + b.float()
    return f


def render(args, mode: str):
    """Outputs and gradients of a random loss with F.linear replaced by `mode`'s product."""
    args = [a.clone().requires_grad_(i in (0, 4, 5, 6, 7)) for i, a in enumerate(args)]
    F.linear = linear(mode)
    try:
        out = reference_render_triplane(*args, clip_to_box=True)
    finally:
        F.linear = _LINEAR
    g = torch.Generator().manual_seed(1)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.dtype)).sum() for o in out)
    return [o.detach().double() for o in out], [x.double() for x in
                                                torch.autograd.grad(loss, [args[i] for i in (0, 4, 5, 6, 7)])]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(H.RESULTS_DIR))
    a = p.parse_args(argv)
    args = _scene(B=1, R=512, S=48, C=32, H=64, W=64, Hd=64, Co=32, seed=3)  # float64
    ref_out, ref_grad = render(args, "float64")
    lines = ["# TF32 vs 3xTF32 decoder products in render_triplane (CPU emulation)", "",
             "Machine: " + ", ".join(f"{k} {v}" for k, v in H.machine().items()), "",
             "Scene: 512 rays x 48 samples, planes 3x32x64^2, decoder 32 -> 64 -> 1 + 32, clip to box. Largest "
             "absolute error against float64 (outputs), and largest absolute error / largest |gradient| (gradients).",
             "", "| products | " + " | ".join(OUTPUTS + GRADS) + " |", "|---|" + "---:|" * (len(OUTPUTS) + len(GRADS))]
    for mode in ("float32", "tf32x3", "tf32"):
        out, grad = render(args, mode)
        errs = [float((o - r).abs().max()) for o, r in zip(out, ref_out)]
        errs += [float((g - r).abs().max() / r.abs().max()) for g, r in zip(grad, ref_grad)]
        lines.append(f"| {mode} | " + " | ".join(f"{e:.1e}" for e in errs) + " |")
        print(lines[-1], flush=True)
    path = Path(a.out) / "tf32_precision.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
