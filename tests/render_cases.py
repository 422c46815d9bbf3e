"""Shared by the render_triplane tests of the CUDA kernels (tests/test_cuda_emu_render.py in the CPU emulator,
tests/test_cuda.py on a GPU): scenes, incoming-gradient subsets, comparisons with a readable failure, and the
reference of the 16-bit path's arithmetic.

The CUDA kernel runs the decoder on tensor cores. For float16 / bfloat16 planes its GEMM operands are bfloat16
(float32 accumulation): the mean features F, w1, the activations A = softplus(h) and w2 on the way forward; the
gradient gY of the decoder's outputs, softplus'(h), gH = (gY w2) softplus'(h), and again A, F, w1, w2 on the way
back. ``bf16_path_reference`` is that arithmetic in float64 with exactly those roundings (and nothing else
rounded), so the kernel must agree with it to float32 rounding, except where a value computed in float32 by the
kernel and in float64 here lies on opposite sides of a bfloat16 rounding boundary. Such a flip moves one operand
by one bfloat16 ulp (relative u = 2^-8), which moves a result by at most u times its largest term: the tolerance
``bf16_tol`` is 2u of the result's scale (two flips' worth), with a float32 floor.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from oneshot.ops import reference, reference_render_triplane

AXES_PAIRS = ((0, 1), (0, 2), (2, 1))
AXES_FLAT = [0, 1, 0, 2, 2, 1]
U_BF16 = 2.0 ** -8  # unit roundoff of bfloat16 (8 significant bits)
OUT_NAMES = ("features", "depth", "opacity", "weights")
GRAD_NAMES = ("planes", "w1", "b1", "w2", "b2")
# Every non-empty subset of the four incoming gradients (features, depth, opacity, weights), and a few that the
# default suite runs (the full set runs with -m slow).
ALL_SUBSETS = [s for n in range(1, 5) for s in itertools.combinations(range(4), n)]
SOME_SUBSETS = [(0, 1, 2, 3), (0,), (1,), (2,), (3,), (1, 3)]


def scene(B=2, R=13, S=9, C=5, H=7, W=11, Hd=6, Co=4, dtype=torch.float64, seed=0, spread=0.3):
    """planes [B, 3, C, H, W], origins / directions [B, R, 3], depths [B, R, S], w1, b1, w2, b2 (test_render_triplane's
    scene: rays from z = 1.2 towards -z through the box)."""
    g = torch.Generator().manual_seed(seed)
    planes = torch.randn(B, 3, C, H, W, generator=g, dtype=dtype)
    o = (torch.rand(B, R, 3, generator=g, dtype=dtype) - 0.5) * spread + torch.tensor([0, 0, 1.2], dtype=dtype)
    d = F.normalize(torch.randn(B, R, 3, generator=g, dtype=dtype) * 0.3 + torch.tensor([0, 0, -1.0], dtype=dtype),
                    dim=-1)
    t = torch.sort(torch.rand(B, R, S, generator=g, dtype=dtype) * 1.6 + 0.4, -1).values
    w1 = torch.randn(Hd, C, generator=g, dtype=dtype) / C ** 0.5
    b1 = torch.randn(Hd, generator=g, dtype=dtype)
    w2 = torch.randn(1 + Co, Hd, generator=g, dtype=dtype) / Hd ** 0.5
    b2 = torch.randn(1 + Co, generator=g, dtype=dtype)
    return planes, o, d, t, w1, b1, w2, b2


def cotangents(args, which, seed=0):
    """Random incoming gradients for the outputs in `which` (None for the others), in the compute dtype."""
    planes, o, _, t = args[:4]
    B, R, S = t.shape
    Co = args[6].shape[0] - 1
    g = torch.Generator().manual_seed(seed)
    shapes = ((B, R, Co), (B, R), (B, R), (B, R, S - 1))
    return [torch.randn(s, generator=g, dtype=torch.float64).to(o.dtype) if k in which else None
            for k, s in enumerate(shapes)]


def reference_grads(args, cots, clip, bias=-1.0, box_warp=1.0):
    """The composed float64 reference: outputs and d loss / d (planes, w1, b1, w2, b2), loss = sum <out, cot>."""
    leaves = [a.detach().double().requires_grad_(i in (0, 4, 5, 6, 7)) for i, a in enumerate(args)]
    out = reference_render_triplane(*leaves, box_warp, AXES_PAIRS, clip, bias)
    loss = sum((x * c.double()).sum() for x, c in zip(out, cots) if c is not None)
    grads = torch.autograd.grad(loss, [leaves[i] for i in (0, 4, 5, 6, 7)])
    return [x.detach() for x in out], list(grads)


def _bf16(x):
    return x.to(torch.bfloat16).to(torch.float64)


def bf16_path_reference(args, cots, clip, bias=-1.0, box_warp=1.0):
    """The kernel's 16-bit-planes arithmetic in float64: outputs and the five gradients (the planes' in the planes'
    dtype), with the GEMM operands rounded to bfloat16 where the kernel rounds them (see the module's doc)."""
    planes, o, d, t, w1, b1, w2, b2 = args
    B, R, S = t.shape
    o, d, t = o.double(), d.double(), t.double()
    pts = (o[:, :, None] + t[..., None] * d[:, :, None]).reshape(B, R * S, 3)
    P = planes.detach().double().requires_grad_()
    feats = reference.triplane_sample(P, pts, box_warp, AXES_PAIRS, "mean")  # [B, R S, C]
    F16, W1, W2 = _bf16(feats.detach()), _bf16(w1.double()), _bf16(w2.double())
    h = F16 @ W1.T + b1.double()
    A = _bf16(F.softplus(h))
    D = _bf16(torch.where(h > 20, torch.ones_like(h), torch.sigmoid(h)))
    y = (A @ W2.T + b2.double()).detach().requires_grad_()
    sigma = y[..., 0]
    if clip:
        inside = pts.abs().amax(-1) <= box_warp / 2
        sigma = torch.where(inside, sigma, sigma.new_tensor(-1e4))
    color = torch.sigmoid(y[..., 1:]) * 1.002 - 0.001
    out = reference.ray_march(color.reshape(B, R, S, -1), sigma.reshape(B, R, S), t, bias, False)
    loss = sum((x * c.double()).sum() for x, c in zip(out, cots) if c is not None)
    gY = _bf16(torch.autograd.grad(loss, y)[0])  # [B, R S, O]
    gb2 = gY.sum((0, 1))
    gw2 = torch.einsum("bso,bsj->oj", gY, A)
    gH = _bf16((gY @ W2) * D)
    gb1 = gH.sum((0, 1))
    gw1 = torch.einsum("bsj,bsc->jc", gH, F16)
    gF = gH @ W1
    (gP,) = torch.autograd.grad(feats, P, gF)
    return [x.detach() for x in out], [gP.to(planes.dtype), gw1, gb1, gw2, gb2]


def bf16_tol(ref):
    """(rtol, atol) for a result of the 16-bit path against bf16_path_reference (two bfloat16 flips' worth)."""
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    return 2 * U_BF16, 2 * U_BF16 * scale + 1e-6


def f32_tol(ref, S):
    """(rtol, atol) of a float32-accurate result against the float64 reference: the results accumulate along rays of
    S samples, at most ~4 S roundings of 2^-24 relative to the result's scale (64 at least). The float32 CPU kernel
    meets it (test_cuda_emu_render checks that too); plain TF32 (10-bit mantissas, 2^-11) is ~50x outside it."""
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    k = max(4 * S, 64) * 2.0 ** -24
    return k, k * scale + 1e-12


def assert_close(got, want, rtol, atol, name):
    """Elementwise |got - want| <= atol + rtol |want|, reporting the worst element and how many fail."""
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    if got.numel() == 0:
        return
    err = (got - want).abs()
    bad = err > atol + rtol * want.abs()
    bad |= got.isnan() != want.isnan()
    if bool(bad.any()):
        i = int(torch.argmax(torch.where(bad, err, torch.zeros_like(err))))
        where = tuple(int(v) for v in torch.unravel_index(torch.tensor(i), got.shape))
        raise AssertionError(f"{name}: {int(bad.sum())} of {got.numel()} elements differ; max abs diff "
                             f"{float(err.max()):.3g} (rel {float((err / want.abs().clamp_min(1e-30)).max()):.3g}) "
                             f"at {where}: got {float(got.flatten()[i]):.6g}, want {float(want.flatten()[i]):.6g} "
                             f"(rtol {rtol:.3g}, atol {atol:.3g})")
