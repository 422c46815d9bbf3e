"""render_triplane's CUDA kernels on a GPU: every arithmetic path (float64 SIMT, float32 3xTF32 tensor cores,
float16 / bfloat16 planes on bfloat16 tensor cores) and every subset of incoming gradients against the reference of
its arithmetic, the paper's sizes against the CPU kernel, gradcheck, opcheck, layouts, determinism reporting.
Skipped, with the reason, without a GPU and the CUDA build; the same kernels run in the CPU emulator everywhere
(tests/test_cuda_emu_render.py, whose module doc gives the tolerances used here too).
"""

from __future__ import annotations

import pytest
import torch

from conftest import deterministic_mode
from oneshot import ops
from render_cases import (AXES_FLAT, ALL_SUBSETS, GRAD_NAMES, OUT_NAMES, U_BF16, assert_close, bf16_path_reference,
                          bf16_tol, cotangents, reference_grads, scene)

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or not ops.backend_info()["native_cuda"],
    reason="needs a CUDA GPU and the extension built with CUDA (FORCE_CUDA=1 pip install --no-build-isolation .)",
)

LOW = (torch.float16, torch.bfloat16)
TOL = {torch.float64: 1e-10, torch.float32: 2e-4}


def on_cuda(args, dtype):
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    return [args[0].to("cuda", dtype)] + [a.to("cuda", compute) for a in args[1:]]


def render_and_grads(args, cots, clip):
    out = torch.ops.oneshot.render_triplane(*args, 1.0, AXES_FLAT, clip, -1.0)
    grads = torch.ops.oneshot.render_triplane_backward(*cots, *args, 1.0, AXES_FLAT, clip, -1.0)
    return [x.cpu() for x in out], [x.cpu() for x in grads]


def check_path(args, which, clip, seed=0):
    dtype = args[0].dtype
    cots = [None if c is None else c.cuda() for c in cotangents(args, which, seed)]
    out, grads = render_and_grads(args, cots, clip)
    cpu_args = [a.cpu() for a in args]
    cpu_cots = [None if c is None else c.cpu() for c in cots]
    if dtype in LOW:
        want, want_g = bf16_path_reference(cpu_args, cpu_cots, clip)
        tols = [bf16_tol(w) for w in [*want, *want_g]]
    else:
        want, want_g = reference_grads(cpu_args, cpu_cots, clip)
        tols = [(TOL[dtype], TOL[dtype])] * 9
    assert grads[0].dtype == dtype
    for got, exp, name, (rtol, atol) in zip([*out, *grads], [*want, *want_g], OUT_NAMES + GRAD_NAMES, tols):
        assert_close(got, exp, rtol, atol, f"{dtype} {name} (gradients {which})")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, *LOW])
@pytest.mark.parametrize("which", ALL_SUBSETS)
@pytest.mark.parametrize("clip", [False, True])
def test_render_every_path_and_gradient_subset(dtype, which, clip):
    args = on_cuda(scene(B=2, R=37, S=70, C=8, H=6, W=7, Hd=20, Co=5, seed=21), dtype)
    check_path(args, which, clip, seed=sum(which))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, *LOW])
@pytest.mark.parametrize("C,Hd,Co", [(1, 1, 1), (3, 17, 2), (33, 65, 7), (128, 64, 128)])
def test_render_odd_sizes(dtype, C, Hd, Co):
    args = on_cuda(scene(B=1, R=9, S=33, C=C, H=5, W=9, Hd=Hd, Co=Co, seed=C + Hd), dtype)
    check_path(args, (0, 1, 2, 3), clip=True, seed=Co)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_render_paper_sizes_against_the_cpu_kernel(dtype):
    """The paper's training render (C 32, hidden 64, 1 + Co 33, 96 samples) on 2048 rays: float32 against the float32
    CPU kernel (both float32-accurate, 2e-4 of each result's scale); bfloat16 planes within the 16u bound of it."""
    args = on_cuda(scene(B=2, R=1024, S=96, C=32, H=64, W=64, Hd=64, Co=32, seed=22, spread=0.8), dtype)
    cots = [c.cuda() for c in cotangents(args, (0, 1, 2, 3), seed=22)]
    out, grads = render_and_grads(args, cots, True)
    cpu = [a.cpu() for a in args]
    want = ops.render_triplane(*cpu, clip_to_box=True, backend="native")
    want_g = torch.ops.oneshot.render_triplane_backward(*[c.cpu() for c in cots], *cpu, 1.0, AXES_FLAT, True, -1.0)
    k = 2e-4 if dtype == torch.float32 else 16 * U_BF16
    for got, exp, name in zip([*out, *grads], [*want, *want_g], OUT_NAMES + GRAD_NAMES):
        assert_close(got, exp, k, k * float(exp.float().abs().max()), f"{dtype} {name}")


def test_render_gradcheck():
    args = on_cuda(scene(1, 3, 5, 3, 4, 5, 4, 2, seed=4), torch.float64)
    leaves = [a.requires_grad_(i in (0, 4, 5, 6, 7)) for i, a in enumerate(args)]
    f = lambda *a: ops.render_triplane(*a, clip_to_box=True, backend="native")  # noqa: E731
    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_render_opcheck(dtype):
    args = on_cuda(scene(1, 4, 6, 3, 5, 5, 4, 3, seed=5), dtype)
    args = [a.requires_grad_(i in (0, 4, 5, 6, 7)) for i, a in enumerate(args)]
    torch.library.opcheck(torch.ops.oneshot.render_triplane.default, (*args, 1.0, AXES_FLAT, True, -1.0))


def test_render_channels_last_planes_and_misaligned_storage():
    args = on_cuda(scene(B=1, R=64, S=40, C=16, H=9, W=8, Hd=16, Co=3, seed=6), torch.float32)
    cots = [c.cuda() for c in cotangents(args, (0, 1, 2, 3), seed=6)]
    want, want_g = render_and_grads(args, cots, False)
    cl = args[0].permute(0, 1, 3, 4, 2).contiguous()
    storage = torch.empty(cl.numel() + 1, device="cuda")
    shifted = storage[1:].view(cl.shape)
    shifted.copy_(cl)
    for planes in (cl.permute(0, 1, 4, 2, 3), shifted.permute(0, 1, 4, 2, 3)):
        out, grads = render_and_grads([planes, *args[1:]], cots, False)
        for k, (a, b, name) in enumerate(zip([*out, *grads], [*want, *want_g], OUT_NAMES + GRAD_NAMES)):
            rtol = 0.0 if k < 4 else 1e-5  # gradients: atomics in another order
            assert_close(a, b, rtol, rtol * float(b.abs().max()), name)


def test_render_deterministic_mode_reports_the_atomic_backward():
    args = on_cuda(scene(1, 4, 6, 3, 5, 5, 4, 3, seed=7), torch.float32)
    args[0].requires_grad_()
    out = ops.render_triplane(*args, backend="native")
    with deterministic_mode("render_triplane_backward"):
        out.features.sum().backward()


def test_render_empty_inputs():
    args = on_cuda(scene(B=1, R=0, S=4, C=3, H=3, W=3, Hd=4, Co=2), torch.float32)
    out = ops.render_triplane(*args, backend="native")
    assert out.features.shape == (1, 0, 2) and out.weights.shape == (1, 0, 3)
