"""The render_triplane CUDA kernels (csrc/render/render_cuda.cu) executed in the CPU emulator of CUDA
(tests/cuda_emu), under the three schedules of test_cuda_emu.py, against the float64 reference.

Every arithmetic path runs: float64 (SIMT), float32 (3xTF32 on tensor cores), float16 / bfloat16 planes (bfloat16
tensor cores); every subset of incoming gradients (all 15 with -m slow); rays of several 32-sample chunks, several
rays per warp (the persistent grid), the launch plans that shared memory forces, and bad input.

Tolerances, by path: float64 1e-10 and float32 2e-4 as before the tensor cores, and for float32 also
render_cases.f32_tol, float32's own accuracy (the 3xTF32 split keeps it: each product is exact to 2^-22 relative;
TF32 alone fails it); 16-bit planes against the reference of their arithmetic
(render_cases.bf16_path_reference, 2u = 2^-7 of each result's scale: see render_cases) and, more loosely, against
the float32 contract (render_cases' 16u bound: at most ~8 bfloat16 roundings lie on the way to any result,
each within u of the magnitude of its terms, and a factor 2 for the terms' magnitude over the result's).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from conftest import deterministic_mode
from oneshot import ops
from render_cases import (AXES_FLAT, AXES_PAIRS, ALL_SUBSETS, GRAD_NAMES, OUT_NAMES, SOME_SUBSETS, U_BF16,
                          assert_close, bf16_path_reference, bf16_tol, cotangents, f32_tol, reference_grads, scene)
from test_cuda_emu import E, GRID_CAP, capped, emulated_kernels, grid_x, launches  # noqa: F401 (the fixture)

ROOT = Path(__file__).resolve().parents[1]
FWD = "render_cuda::render_forward_kernel"
BWD = "render_cuda::render_backward_kernel"
LOW = (torch.float16, torch.bfloat16)
TOL = {torch.float64: 1e-10, torch.float32: 2e-4}


def emu_render(args, clip, bias=-1.0):
    return E().render_triplane(*args, 1.0, AXES_FLAT, clip, bias)


def emu_backward(args, cots, clip, bias=-1.0):
    return E().render_triplane_backward(*cots, *args, 1.0, AXES_FLAT, clip, bias)


def planes_as(args, dtype):
    """The scene with planes of `dtype` (16-bit: the rest float32)."""
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    return [args[0].to(dtype)] + [a.to(compute) for a in args[1:]]


def check_path(args, which, clip, seed=0):
    """Forward and backward of the emulated kernel against the reference of its arithmetic."""
    dtype = args[0].dtype
    cots = cotangents(args, which, seed)
    out = emu_render(args, clip)
    grads = emu_backward(args, cots, clip)
    if dtype in LOW:
        want, want_g = bf16_path_reference(args, cots, clip)
        tols = [bf16_tol(w) for w in [*want, *want_g]]
    else:
        want, want_g = reference_grads(args, cots, clip)
        tols = [(TOL[dtype], TOL[dtype])] * 9
    assert grads[0].dtype == dtype and all(x.dtype == args[1].dtype for x in [*out, *grads[1:]])
    for got, exp, name, (rtol, atol) in zip([*out, *grads], [*want, *want_g], OUT_NAMES + GRAD_NAMES, tols):
        assert_close(got, exp, rtol, atol, f"{dtype} {name} (gradients {which})")


# ----------------------------------------------------------------------------------------------------------
# against the reference


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
@pytest.mark.parametrize("clip", [False, True])
def test_render_triplane_matches_the_reference(dtype, tol, clip):
    args = scene(B=2, R=5, S=6, C=4, H=5, W=6, Hd=5, Co=3, dtype=dtype, seed=3)
    out = emu_render(args, clip)
    want = ops.reference_render_triplane(*args, 1.0, AXES_PAIRS, clip, -1.0)
    for got, exp in zip(out, want):
        assert torch.allclose(got, exp, rtol=tol, atol=tol), float((got - exp).abs().max())
    # the backward, with every incoming gradient and with only some
    g = torch.Generator().manual_seed(5)
    cots = [torch.randn(x.shape, generator=g, dtype=dtype) for x in want]
    for which in ((0, 1, 2, 3), (0,), (1, 3)):
        gin = [cots[k] if k in which else None for k in range(4)]
        got = emu_backward(args, gin, clip)
        leaves = [a.clone().requires_grad_(i in (0, 4, 5, 6, 7)) for i, a in enumerate(args)]
        ref = ops.reference_render_triplane(*leaves, 1.0, AXES_PAIRS, clip, -1.0)
        loss = sum((x * c).sum() for x, c in zip(ref, gin) if c is not None)
        exp = torch.autograd.grad(loss, [leaves[i] for i in (0, 4, 5, 6, 7)])
        for name, a, b in zip(GRAD_NAMES, got, exp):
            assert torch.allclose(a, b, rtol=tol, atol=tol), (which, name, float((a - b).abs().max()))


# Rays of 3 chunks (S 70: intervals 0..68 in chunks of 32), 6 rays for blocks of 4 warps, channels that take the
# 16-byte gathers (C 8: float4 / 8 halves / double2) and the decoder padded on every side (hidden 20, 1 + Co 6).
PATH_SCENE = dict(B=2, R=3, S=70, C=8, H=6, W=7, Hd=20, Co=5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, *LOW])
@pytest.mark.parametrize("which", SOME_SUBSETS)
def test_render_every_path_and_gradient_subset(dtype, which):
    args = planes_as(scene(**PATH_SCENE, seed=11), dtype)
    check_path(args, which, clip=True, seed=len(which))


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, *LOW])
@pytest.mark.parametrize("which", ALL_SUBSETS)
@pytest.mark.parametrize("clip", [False, True])
def test_render_all_gradient_subsets(dtype, which, clip):
    args = planes_as(scene(**PATH_SCENE, seed=12), dtype)
    check_path(args, which, clip, seed=sum(which))


@pytest.mark.parametrize("sizes", [dict(B=2, R=3, S=70, C=8, H=6, W=7, Hd=20, Co=5),
                                   dict(B=1, R=4, S=96, C=32, H=8, W=8, Hd=64, Co=32)])
def test_render_float32_path_is_float32_accurate(sizes):
    """3xTF32 on tensor cores keeps float32's accuracy: the float32 kernel meets render_cases.f32_tol against the
    float64 reference, as the float32 CPU kernel does (checked here too, so the bound is float32's, not looser)."""
    args = [a.float() for a in scene(**sizes, seed=14)]
    cots = cotangents(args, (0, 1, 2, 3), seed=14)
    want, want_g = reference_grads(args, cots, True)
    got = [*emu_render(args, True), *emu_backward(args, cots, True)]
    cpu = [*ops.render_triplane(*args, clip_to_box=True, backend="native"),
           *torch.ops.oneshot.render_triplane_backward(*cots, *args, 1.0, AXES_FLAT, True, -1.0)]
    for a, c, w, name in zip(got, cpu, [*want, *want_g], OUT_NAMES + GRAD_NAMES):
        tol = f32_tol(w, sizes["S"])
        assert_close(c, w, *tol, f"CPU {name}")
        assert_close(a, w, *tol, f"CUDA {name}")


@pytest.mark.parametrize("low", LOW)
def test_render_16bit_path_stays_within_the_bfloat16_bound_of_the_float32_contract(low):
    """Against the float32 CPU kernel on the same 16-bit planes: within 16u of each result's scale (see the module's
    doc), and on average well inside it (the errors are roundings, not a bias)."""
    args = planes_as(scene(**PATH_SCENE, seed=13), low)
    cots = cotangents(args, (0, 1, 2, 3), seed=3)
    out = emu_render(args, True)
    grads = emu_backward(args, cots, True)
    want = ops.render_triplane(*args, clip_to_box=True, backend="native")
    want_g = torch.ops.oneshot.render_triplane_backward(*cots, *args, 1.0, AXES_FLAT, True, -1.0)
    for got, exp, name in zip([*out, *grads], [*want, *want_g], OUT_NAMES + GRAD_NAMES):
        scale = float(exp.float().abs().max())
        assert_close(got, exp, 16 * U_BF16, 16 * U_BF16 * scale, f"{low} {name}")
        mean_err = float((got.double() - exp.double()).abs().mean())
        assert mean_err <= 2 * U_BF16 * scale, (name, mean_err, scale)


@settings(deadline=None, max_examples=6)
@given(B=st.integers(1, 2), R=st.integers(1, 6), S=st.integers(2, 40), C=st.integers(1, 20), H=st.integers(1, 6),
       W=st.integers(1, 6), Hd=st.integers(1, 24), Co=st.integers(1, 9), clip=st.booleans(),
       dtype=st.sampled_from([torch.float64, torch.float32, torch.bfloat16]), which=st.integers(1, 15),
       seed=st.integers(0, 999))
@example(B=1, R=1, S=2, C=1, H=1, W=1, Hd=1, Co=1, clip=True, dtype=torch.float32, which=15, seed=0)
@example(B=1, R=1, S=33, C=17, H=2, W=3, Hd=17, Co=9, clip=False, dtype=torch.bfloat16, which=5, seed=1)
def test_render_drawn_shapes(B, R, S, C, H, W, Hd, Co, clip, dtype, which, seed):
    args = planes_as(scene(B, R, S, C, H, W, Hd, Co, seed=seed), dtype)
    check_path(args, tuple(k for k in range(4) if which >> k & 1), clip, seed)


def test_render_gradcheck():
    args = scene(1, 2, 5, 2, 3, 4, 3, 2, seed=4)

    class Fn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, planes, w1, b1, w2, b2):
            full = [planes, *args[1:4], w1, b1, w2, b2]
            ctx.save_for_backward(*full)
            return emu_render(full, True)

        @staticmethod
        def backward(ctx, *cots):
            g = emu_backward(list(ctx.saved_tensors), [c.contiguous() for c in cots], True)
            return tuple(g)

    leaves = [args[i].clone().requires_grad_() for i in (0, 4, 5, 6, 7)]
    assert torch.autograd.gradcheck(lambda *a: Fn.apply(*a), leaves, eps=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------
# layouts, launch plans, limits


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_render_planes_in_any_layout(dtype):
    """Channels-last planes are read in place, others copied: the same result either way, also from storage that
    is not 16-byte aligned (scalar gathers): bitwise for the outputs (the taps are summed in one order), to the
    rounding of the gradients' atomics otherwise (another lane mapping adds into the planes' gradient in another
    order; 16-bit planes' gradients are then rounded to their dtype)."""
    args = planes_as(scene(B=1, R=4, S=9, C=8, H=5, W=4, Hd=7, Co=3, seed=5), dtype)
    cots = cotangents(args, (0, 1, 2, 3), seed=5)
    want = [*emu_render(args, False), *emu_backward(args, cots, False)]
    cl = args[0].permute(0, 1, 3, 4, 2).contiguous()
    storage = torch.empty(cl.numel() + 1, dtype=dtype)
    shifted = storage[1:].view(cl.shape)  # 2 or 4 bytes past a 16-byte boundary
    shifted.copy_(cl)
    assert shifted.data_ptr() % 16 != 0
    for planes in (cl.permute(0, 1, 4, 2, 3), shifted.permute(0, 1, 4, 2, 3)):
        got = [*emu_render([planes, *args[1:]], False), *emu_backward([planes, *args[1:]], cots, False)]
        for k, (a, b, name) in enumerate(zip(got, want, OUT_NAMES + GRAD_NAMES)):
            rtol = 0.0 if k < 4 else (1e-5 if dtype == torch.float32 else U_BF16)
            assert_close(a, b, rtol, rtol * float(b.abs().max()), name)


@pytest.mark.parametrize("sms", [132, 1])
def test_render_persistent_grid(sms):
    """A warp per ray, 4 warps a block, and no more blocks than stay resident: at the paper's sizes an SM holds 4
    blocks of the bfloat16 forward and 2 of its backward, so with one SM those loop over all 24 rays."""
    args = planes_as(scene(B=2, R=12, S=2, C=32, H=3, W=3, Hd=64, Co=32, seed=6), torch.bfloat16)
    cots = cotangents(args, (0, 1), 6)
    E()._set_sm_count(sms)
    E()._clear_launch_log()
    try:
        out = emu_render(args, False)
        grads = emu_backward(args, cots, False)
    finally:
        E()._set_sm_count(132)
    fwd, bwd = launches(FWD), launches(BWD)
    assert len(fwd) == 1 and len(bwd) == 1 and " block=128,1,1 " in fwd[0] and " block=128,1,1 " in bwd[0]
    assert grid_x(fwd[0]) == capped(6 if sms == 132 else 4), fwd  # ceil(24 rays / 4 warps), or 1 SM x 4 blocks
    assert grid_x(bwd[0]) == capped(6 if sms == 132 else 2), bwd
    want, want_g = bf16_path_reference(args, cots, False)
    for got, exp, name in zip([*out, *grads], [*want, *want_g], OUT_NAMES + GRAD_NAMES):
        assert_close(got, exp, *bf16_tol(exp), name)


@pytest.mark.parametrize("dims,warps", [(dict(C=32, Hd=64, Co=32), (4, 4)), (dict(C=48, Hd=96, Co=32), (4, 4)),
                                        (dict(C=64, Hd=96, Co=32), (4, 2)), (dict(C=64, Hd=160, Co=32), (4, 1))])
def test_render_shared_memory_plan(dims, warps):
    """The decoder's tiles decide the block (float32, forward and backward warps): 4 warps while they fit the
    device's opt-in shared memory (an H100's 227 KiB), then 2, then 1; above 48 KiB the kernel asks for the
    opt-in first (the emulator refuses a launch without it)."""
    args = scene(B=1, R=5, S=3, H=3, W=3, dtype=torch.float32, seed=7, **dims)
    cots = cotangents(args, (0, 1, 2, 3), 7)
    E()._clear_launch_log()
    out = emu_render(args, True)
    grads = emu_backward(args, cots, True)
    for name, w in zip((FWD, BWD), warps):
        rec = launches(name)[0]
        assert f" block={32 * w},1,1 " in rec and int(rec.split("smem=")[1]) > 48 * 1024, rec
    want, want_g = reference_grads(args, cots, True)
    for got, exp, name in zip([*out, *grads], [*want, *want_g], OUT_NAMES + GRAD_NAMES):
        assert_close(got, exp, 2e-4, 2e-4, name)


def ptxas_report():
    spec = importlib.util.spec_from_file_location("ptxas_report", ROOT / "scripts" / "ptxas_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_render_paper_sizes_use_the_designed_shared_memory():
    """The shared memory of the paper's sizes (C 32, hidden 64, 1 + Co 33), which the occupancy in the kernel's
    header is stated for, and which scripts/ptxas_report.py computes (by its mirror of the layout) for the table
    in benchmarks/results/ptxas_sm90.md."""
    want = {(torch.bfloat16, FWD): 51648, (torch.bfloat16, BWD): 93264, (torch.float32, FWD): 78272,
            (torch.float32, BWD): 156752, (torch.float64, FWD): 150656, (torch.float64, BWD): 190608}
    report = ptxas_report()
    for dtype, path in ((torch.bfloat16, "bf16 mma"), (torch.float32, "3xTF32 mma"), (torch.float64, "f64 SIMT")):
        args = planes_as(scene(B=1, R=1, S=2, C=32, H=2, W=2, Hd=64, Co=32, seed=8), dtype)
        E()._clear_launch_log()
        emu_render(args, False)
        emu_backward(args, cotangents(args, (0,), 8), False)
        for name, kind in ((FWD, "forward"), (BWD, "backward")):
            threads, smem = report.render_launch(f"render_{kind}_kernel<x, {path}, 1>")
            assert smem == want[(dtype, name)], (dtype, kind, smem)
            assert launches(name)[0].endswith(f" block={threads},1,1 smem={smem}"), launches(name)


def test_render_triplane_refuses_what_it_cannot_hold():
    args = scene(B=1, R=2, S=3, C=130, H=3, W=3, Hd=2, Co=2, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"supports C <= 128"):
        emu_render(args, False)
    # hidden 160 fits since the tensor-core kernel (test_render_shared_memory_plan); 280 runs forward (one warp a
    # block) but its backward's tiles do not fit even one warp; 700's weights alone do not fit
    args = scene(B=1, R=2, S=3, C=64, H=3, W=3, Hd=280, Co=32, dtype=torch.float32)
    emu_render(args, False)
    with pytest.raises(ValueError, match=r"keeps the decoder in shared memory: 336336 bytes needed, 232448 available "
                                         r"\(hidden = 280\)"):
        emu_backward(args, cotangents(args, (0,)), False)
    for hidden in (700, 100_000):  # 100000: the tiles' byte count would not even fit an int
        args = scene(B=1, R=1, S=2, C=64 if hidden == 700 else 4, H=2, W=2, Hd=hidden, Co=32, dtype=torch.float32)
        with pytest.raises(ValueError, match=r"keeps the decoder in shared memory: at least \d+ bytes needed, 232448 "
                                             rf"available \(hidden = {hidden}\)"):
            emu_render(args, False)


def test_render_empty_inputs_and_no_incoming_gradient():
    args = scene(B=1, R=0, S=4, C=3, H=3, W=3, Hd=4, Co=2, dtype=torch.float32)
    out = emu_render(args, False)
    assert [tuple(x.shape) for x in out] == [(1, 0, 2), (1, 0), (1, 0), (1, 0, 3)]
    args = scene(B=1, R=3, S=4, C=3, H=3, W=3, Hd=4, Co=2, dtype=torch.float32)
    E()._clear_launch_log()
    grads = emu_backward(args, [None] * 4, False)
    assert not launches(BWD) and all(bool((g == 0).all()) for g in grads)


def test_render_deterministic_mode_reports_the_atomic_backward():
    args = scene(B=1, R=2, S=4, C=3, H=3, W=3, Hd=4, Co=2, dtype=torch.float32)
    with deterministic_mode("render_triplane_backward"):
        emu_backward(args, cotangents(args, (0,)), False)
