"""The CUDA kernels, executed: csrc/*/*_cuda.cu compiled by g++ against a CPU model of CUDA's execution
(tests/cuda_emu), registered as ``torch.ops.oneshot_emu.*`` on CPU tensors, and checked against the reference
(float64 oracle) and the native CPU kernels.

This runs on every machine, GPU or not. It exercises the kernels' own indexing, vector widths, thread groups
and shuffles, shared-memory tiling, barriers, point-range splitting and merge, reverse sweeps, scratch paths
and dtype handling; the emulator refuses barrier and shuffle misuse that CUDA leaves undefined. It cannot show
speed, the memory model of real hardware, nvcc's code generation or CUDA's libm: tests/test_cuda.py does that
on a GPU. render_triplane's kernels have their own file, tests/test_cuda_emu_render.py.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from conftest import deterministic_mode
from cuda_emu import build as emu_build
from oneshot import ops
from oneshot.ops import reference
from oneshot.ops.triplane import channels_last
from test_cuda import AXES, DTYPES, check_ray_march, check_triplane, close, cloud, geom_dtype, rays, tri_inputs


FULL_GRIDS = (65535 * 16, 65535)
SMALL_GRIDS = (3, 2)  # grid caps (x, y) that make every grid-stride loop run several rounds
GRID_CAP = list(FULL_GRIDS)


@pytest.fixture(scope="module", autouse=True,
                params=["thread_order", "thread_order+small_grids", "reverse_order+small_grids"])
def emulated_kernels(request):
    """Every test runs three times: the threads of a block in index order with the kernels' own grid sizes, then
    with grids capped at 3 x 2 blocks in index order and in reverse order. A value passed between threads without
    a barrier is stale in one of the orders, and the caps make every grid-stride loop (and the state it carries
    from round to round: shared tiles, per-warp scratch, inactive lanes in shuffles) run several rounds."""
    emu_build.load()
    small = request.param.endswith("small_grids")
    torch.ops.oneshot_emu._set_schedule(1 if request.param.startswith("reverse") else 0)
    GRID_CAP[:] = SMALL_GRIDS if small else FULL_GRIDS
    torch.ops.oneshot_emu._set_max_blocks(*GRID_CAP)
    yield request.param
    torch.ops.oneshot_emu._set_schedule(0)
    torch.ops.oneshot_emu._set_max_blocks(*FULL_GRIDS)
    torch.ops.oneshot_emu._set_sm_count(132)


def E():
    return torch.ops.oneshot_emu


def launches(name: str) -> list[str]:
    return [r for r in E()._launch_log() if r.startswith(name)]


def grid_x(record: str) -> int:
    return int(record.split(" grid=")[1].split(",")[0])


def capped(blocks: int) -> int:
    """The grid.x a launch of `blocks` blocks gets under the current cap."""
    return min(blocks, GRID_CAP[0])


# ----------------------------------------------------------------------------------------------------------
# the emulator itself


@pytest.mark.parametrize("which,want", [
    ("warp_sum", [496.0] * 32 + [1520.0] * 32 + [496.0] * 32 + [1520.0] * 32 + [496.0] * 32 + [1520.0] * 32),
    ("block_sum", [7979.0, 7979.0]),
    ("atomic", [334.0, 334.0, 333.0]),
])
def test_emulator_computes_what_cuda_computes(which, want):
    assert E()._selftest(which).tolist() == want


def test_emulator_poisons_dynamic_shared_memory():
    out = E()._selftest("dynamic_shared")
    assert bool(out[:64].isnan().all())  # read before written
    assert out[64:].tolist() == [float(2 * (63 - i)) for i in range(64)]


def test_emulator_exposes_a_missing_barrier(emulated_kernels):
    out = E()._selftest("missing_barrier")
    if emulated_kernels.startswith("thread_order"):
        assert out.tolist() == [42.0] * 64  # thread 0 ran first: the race is hidden in this order ...
    else:
        assert out[-1].isnan() and out[0] == 42.0  # ... and shows in the other (the poisoned shared memory)


@pytest.mark.parametrize("which,match", [
    ("exit_before_barrier", "__syncthreads reached by 48 threads while 16 threads of the block exited"),
    ("shuffle_with_exited_lane", "lane 3 exited while the lanes of mask 0xffffffff wait"),
    ("lane_outside_mask", r"mask 0x1 called by lane (1|31), outside the mask"),
    ("divergent_barrier", "divergent barrier"),
    ("too_many_threads", "invalid block"),
    ("too_much_shared", "over the 48 KiB"),
])
def test_emulator_refuses_undefined_behaviour(which, match):
    with pytest.raises((RuntimeError, ValueError), match=match):
        E()._selftest(which)


def tf32_rna(x: torch.Tensor) -> torch.Tensor:
    """cvt.rna.tf32.f32 in Python: float32 rounded to 10 mantissa bits, to nearest, ties away from zero."""
    bits = x.float().contiguous().view(torch.int32)
    finite = (bits & 0x7F800000) != 0x7F800000
    rounded = ((bits + 0x1000) & ~0x1FFF).view(torch.float32)
    return torch.where(finite, rounded, x.float())


@pytest.mark.parametrize("kind", [0, 1, 2])
def test_emulator_mma_tile_is_a_matmul(kind):
    """One warp's mma.sync (m16n8k16 bfloat16, m16n8k8 TF32, and the 3xTF32 split) against a plain matmul: the
    selftest kernel builds the fragments by the PTX ISA's layouts, so a misplaced element shows as a wrong D."""
    g = torch.Generator().manual_seed(kind)
    K = 16 if kind == 0 else 8
    A, B, C = torch.randn(16, K, generator=g), torch.randn(K, 8, generator=g), torch.randn(16, 8, generator=g)
    D = E()._selftest_mma(kind, A, B, C, -1)
    if kind == 0:
        Ar, Br = A.bfloat16().double(), B.bfloat16().double()
    elif kind == 1:
        Ar, Br = tf32_rna(A).double(), tf32_rna(B).double()
    else:
        Ar, Br = A.double(), B.double()
    want = Ar @ Br + C.double()
    terms = Ar.abs() @ Br.abs() + C.double().abs()
    # exact products (bf16 x bf16, tf32 x tf32 fit float32), float32 sums: K + 1 roundings of 2^-24 at most; the
    # 3xTF32 products are exact to 3 x 2^-22
    bound = terms * ((K + 1) * 2.0 ** -24 + (3 * 2.0 ** -22 if kind == 2 else 0.0))
    err = (D.double() - want).abs()
    assert bool((err <= bound).all()), float((err - bound).max())
    if kind == 1:  # TF32 alone is not float32-accurate: the split is what buys it
        assert float((D.double() - A.double() @ B.double() - C.double()).abs().max()) > 1e-5


@pytest.mark.parametrize("kind,skip,match", [
    (3, -1, "mma .tf32 operand A with non-zero low 13 bits"),
    (0, 5, "lane 5 exited while the lanes of mask 0xffffffff wait in a warp operation"),
])
def test_emulator_refuses_mma_misuse(kind, skip, match):
    g = torch.Generator().manual_seed(0)
    K = 16 if kind == 0 else 8
    with pytest.raises(RuntimeError, match=match):
        E()._selftest_mma(kind, torch.randn(16, K, generator=g), torch.randn(K, 8, generator=g), torch.zeros(16, 8),
                          skip)


def test_emulator_shuffles():
    out = E()._selftest("shuffles").view(4, 3, 64)
    v = torch.arange(64, dtype=torch.float32) * 100 + 7
    lane = torch.arange(64) % 32
    warp = torch.arange(64) // 32 * 32
    for w_i, width in enumerate((32, 16, 8)):
        base = warp + lane // width * width
        seg = lane % width
        want_idx = base + 5 % width
        assert torch.equal(out[0, w_i], v[want_idx])
        up = torch.where(seg >= 3, warp + lane - 3, warp + lane)
        assert torch.equal(out[1, w_i], v[up])
        down = torch.where(seg + 3 < width, warp + lane + 3, warp + lane)
        assert torch.equal(out[2, w_i], v[down])
        xor = lane ^ 6
        xor = torch.where(xor // width == lane // width, xor, lane)
        assert torch.equal(out[3, w_i], v[warp + xor])


@pytest.mark.parametrize("kind", ["bfloat16", "float16", "tf32"])
def test_emulator_conversions(kind):
    """__float2bfloat16_rn / __float2half_rn (to nearest even, like torch's casts) and cvt.rna.tf32.f32, bit for
    bit, on ties, subnormals, overflow and specials."""
    specials = [0.0, -0.0, 1.0, -1.0, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -11, 1 + 3 * 2 ** -11, 1 + 2 ** -12,
                65504.0, 65519.0, 65520.0, 2 ** -24, 2 ** -25, 3 * 2 ** -25, 2 ** -14, 1e-40, -1e-45, 3.4e38,
                float("inf"), float("-inf"), 1 + 2 ** -10 + 2 ** -11, 2 ** -126]
    x = torch.cat([torch.tensor(specials), torch.randn(300, generator=torch.Generator().manual_seed(1)) * 100,
                   torch.randn(100, generator=torch.Generator().manual_seed(2)) * 1e-6])
    k = {"bfloat16": 0, "float16": 1, "tf32": 2}[kind]
    bits, back = E()._selftest_convert(k, x)
    if kind == "tf32":
        want = tf32_rna(x)
        assert torch.equal(back, want) and torch.equal(bits, want.view(torch.int32))
        return
    dt = torch.bfloat16 if kind == "bfloat16" else torch.float16
    want = x.to(dt)
    assert torch.equal(bits.to(torch.int16), want.view(torch.int16)), kind
    assert torch.equal(back, want.float())
    nan = E()._selftest_convert(k, torch.tensor([float("nan")]))[1]
    assert bool(nan.isnan().all())


def test_emulator_vector_atomics():
    out = E()._selftest("vector_atomics")
    i = torch.arange(192, dtype=torch.float64)
    want = torch.zeros(20, dtype=torch.float64)
    for r in range(3):
        for c in range(4):
            want[4 * r + c] = ((c + 1) * i[i % 3 == r]).sum()
    want[12:16] = 96.0
    assert torch.equal(out.double(), want)
    with pytest.raises(RuntimeError, match="float4 atomicAdd on a misaligned address"):
        E()._selftest("vector_atomics_misaligned")


def test_emulator_shared_memory_opt_in_and_device_attributes():
    out = E()._selftest("optin_shared")  # refused without cudaFuncSetAttribute, then run with it
    assert out[64:].tolist() == [float(2 * (63 - i)) for i in range(64)]
    assert E()._selftest("device_attributes").tolist() == [132, 9, 0, 228 * 1024, 227 * 1024]


# ----------------------------------------------------------------------------------------------------------
# autograd over the emulated kernels (the same calls oneshot/ops makes to the native ops)


class Triplane(torch.autograd.Function):
    @staticmethod
    def forward(ctx, planes, points, box_warp, axes, reduce):
        pl = channels_last(planes)
        ctx.save_for_backward(pl, points)
        ctx.args = (box_warp, axes, reduce)
        return E().triplane_sample(pl, points, box_warp, axes, reduce)

    @staticmethod
    def backward(ctx, grad):
        pl, pts = ctx.saved_tensors
        need_p, need_x = ctx.needs_input_grad[:2]
        gp, gx = E().triplane_sample_backward(grad.contiguous(), pl, pts, *ctx.args, need_p, need_x)
        return (gp if need_p else None), (gx if need_x else None), None, None, None


def triplane(planes, points, reduce="mean", box_warp=1.0, axes=AXES):
    return Triplane.apply(planes, points, box_warp, axes, reduce)


class RayMarch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, colors, densities, depths, bias, white):
        ctx.save_for_backward(colors, densities, depths)
        ctx.args = (bias, white)
        ctx.set_materialize_grads(False)
        return E().ray_march(colors, densities, depths, bias, white)

    @staticmethod
    def backward(ctx, gf, gd, go, gw):
        c, s, t = ctx.saved_tensors
        gc, gs = E().ray_march_backward(gf, gd, go, gw, c, s, t, *ctx.args)
        return gc, gs, None, None, None


def ray_march(colors, densities, depths, bias=-1.0, white=False):
    return RayMarch.apply(colors, densities, depths, bias, white)


class Rasterize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, points, features, H, W, box_warp, axes, valid, max_distance, align_corners):
        planes, index = E().rasterize_points(points, features, H, W, box_warp, axes, valid, max_distance,
                                             align_corners)
        ctx.save_for_backward(index)
        ctx.num_points = points.shape[1]
        ctx.mark_non_differentiable(index)
        return planes, index

    @staticmethod
    def backward(ctx, grad_planes, _):
        (index,) = ctx.saved_tensors
        return (None, E().rasterize_points_backward(grad_planes.contiguous(), index, ctx.num_points)) + (None,) * 7


def rasterize(points, features, H, W, box_warp=1.0, axes=AXES, valid=None, max_distance=None, align_corners=False):
    return Rasterize.apply(points, features, H, W, box_warp, axes, valid, max_distance, align_corners)


# ----------------------------------------------------------------------------------------------------------
# triplane_sample


def emu_sample(planes, points, reduce):
    return triplane(planes, points, reduce)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduce", ["mean", "sum", "none"])
@pytest.mark.parametrize("B,C,H,W,M", [(1, 1, 1, 1, 5), (2, 3, 5, 7, 33), (1, 32, 6, 5, 41), (2, 33, 9, 31, 20),
                                       (1, 8, 4, 6, 70), (1, 16, 3, 3, 9)])
def test_triplane_matches_reference(dtype, reduce, B, C, H, W, M):
    planes, points = tri_inputs(B, C, H, W, M, dtype, seed=C + M, device="cpu")
    check_triplane(emu_sample, planes, points, dtype, reduce, seed=M)


@pytest.mark.parametrize("grads", [(True, False), (False, True)])
def test_triplane_one_gradient(grads):
    planes, points = tri_inputs(2, 12, 7, 6, 30, torch.float32, seed=4, device="cpu")
    check_triplane(emu_sample, planes, points, torch.float32, "sum", grads=grads)


@pytest.mark.parametrize("dtype,C,vw", [(torch.float32, 32, 4), (torch.float32, 33, 1), (torch.float16, 16, 8),
                                        (torch.bfloat16, 24, 8), (torch.float64, 6, 2), (torch.float64, 5, 1)])
def test_triplane_vector_width_and_groups(dtype, C, vw):
    """16-byte vectors when C and the pointers allow, scalar otherwise; a group of threads per point."""
    planes, points = tri_inputs(1, C, 5, 4, 64, dtype, seed=C, device="cpu")
    E()._clear_launch_log()
    check_triplane(emu_sample, planes, points, dtype, "none")
    steps = -(-C // vw)
    gs = 1
    while gs < 32 and gs < steps:
        gs *= 2
    want_blocks = -(-64 // (256 // gs))
    fwd, bwd = launches("triplane_forward_kernel"), launches("triplane_backward_kernel")
    assert len(fwd) == 1 and len(bwd) == 1
    assert grid_x(fwd[0]) == capped(want_blocks) and grid_x(bwd[0]) == capped(want_blocks), (fwd, bwd)


def test_triplane_misaligned_planes_fall_back_to_scalar_loads():
    planes, points = tri_inputs(1, 8, 4, 4, 40, torch.float32, seed=2, device="cpu")
    cl = planes.permute(0, 1, 3, 4, 2).contiguous()
    storage = torch.empty(cl.numel() + 1)
    shifted = storage[1:].view(cl.shape)  # 4 bytes past a 16-byte boundary
    shifted.copy_(cl)
    assert shifted.data_ptr() % 16 != 0
    E()._clear_launch_log()
    out = E().triplane_sample(shifted.permute(0, 1, 4, 2, 3), points, 1.0, AXES, "mean")
    close(out, reference.triplane_sample(planes.double(), points.double()), torch.float32, scale=3.0)
    assert grid_x(launches("triplane_forward_kernel")[0]) == capped(-(-40 // (256 // 8)))  # scalar: 8 per point


@pytest.mark.parametrize("layout", ["channels_first", "strided_points"])
def test_triplane_non_contiguous(layout):
    planes, points = tri_inputs(2, 8, 12, 10, 50, torch.float32, seed=5, device="cpu")
    if layout == "strided_points":
        points = torch.cat([points, points], dim=-1)[..., ::2]
        assert not points.is_contiguous()
    # channels_first: planes stay [B, 3, C, H, W]-contiguous and go to the op without the wrapper's conversion
    out = E().triplane_sample(planes, points, 1.0, AXES, "mean")
    close(out, reference.triplane_sample(planes.double(), points.double()), torch.float32, scale=3.0)


def test_triplane_gradcheck():
    planes, points = tri_inputs(1, 3, 4, 5, 6, torch.float64, seed=7, device="cpu")
    f = lambda p, x: triplane(p, x, "none")  # noqa: E731
    assert torch.autograd.gradcheck(f, (planes.requires_grad_(), (points * 0.8).requires_grad_()))


@given(B=st.integers(1, 2), C=st.integers(1, 40), H=st.integers(1, 9), W=st.integers(1, 9), M=st.integers(1, 40),
       dtype=st.sampled_from(DTYPES), reduce=st.sampled_from(["mean", "sum", "none"]))
def test_triplane_drawn_shapes(B, C, H, W, M, dtype, reduce):
    planes, points = tri_inputs(B, C, H, W, M, dtype, seed=B * C * H * W * M, device="cpu")
    check_triplane(emu_sample, planes, points, dtype, reduce)


def test_triplane_empty_inputs():
    planes, points = tri_inputs(1, 4, 5, 5, 0, torch.float32, device="cpu")
    assert E().triplane_sample(planes, points, 1.0, AXES, "mean").shape == (1, 0, 4)
    planes, points = tri_inputs(1, 0, 5, 5, 7, torch.float32, device="cpu")
    assert E().triplane_sample(planes, points, 1.0, AXES, "none").shape == (1, 3, 7, 0)
    gp, gx = E().triplane_sample_backward(torch.zeros(1, 7, 0), planes, points, 1.0, AXES, "mean", True, True)
    assert gp.shape == planes.shape and bool((gx == 0).all())


def test_triplane_deterministic_mode_reports_the_atomic_backward():
    planes, points = tri_inputs(1, 4, 8, 8, 20, torch.float32, device="cpu")
    out = triplane(planes.requires_grad_(), points)
    with deterministic_mode("triplane_sample_backward"):
        out.sum().backward()


# ----------------------------------------------------------------------------------------------------------
# ray_march


def emu_march(c, s, t, white):
    return ray_march(c, s, t, -1.0, white)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("white", [False, True])
@pytest.mark.parametrize("lead,S,C,regime", [((7,), 2, 1, "moderate"), ((3, 5), 17, 3, "dense"),
                                             ((6,), 40, 32, "moderate"), ((5,), 33, 33, "sparse"),
                                             ((4,), 9, 65, "moderate"), ((3,), 12, 130, "dense"),
                                             ((2,), 7, 300, "moderate")])
def test_ray_march_matches_reference(dtype, white, lead, S, C, regime):
    """C covers every register tiling of the forward (1, 2, 4, 8 chunks of 32 channels, and blocks past 256)."""
    colors, dens, depths = rays(lead, S, C, dtype, seed=S * C, regime=regime, device="cpu")
    check_ray_march(emu_march, colors, dens, depths, white, seed=S)


@pytest.mark.parametrize("which", [(0,), (1,), (2,), (3,), (1, 3)])
def test_ray_march_partial_gradients(which):
    """Absent incoming gradients arrive as None (nullptr in the kernel)."""
    colors, dens, depths = rays((11,), 14, 5, torch.float32, seed=3, device="cpu")
    check_ray_march(emu_march, colors, dens, depths, white=True, which=which, seed=len(which))


@pytest.mark.parametrize("dtype,S", [(torch.float32, 1600), (torch.float64, 800)])
def test_ray_march_long_rays_use_global_scratch(dtype, S):
    """2 S values per warp no longer fit 48 KiB for 4 warps: the scratch moves to global memory."""
    colors, dens, depths = rays((3,), S, 2, dtype, seed=2, regime="sparse", device="cpu")
    colors.requires_grad_()
    dens.requires_grad_()
    E()._clear_launch_log()
    out = ray_march(colors, dens, depths)
    g = torch.autograd.grad(out[0].sum() + out[2].sum(), (colors, dens))
    assert launches("ray_march_backward_kernel")[0].endswith("smem=0")
    c, d = colors.detach().requires_grad_(), dens.detach().requires_grad_()
    want = ops.ray_march(c, d, depths, backend="native")
    e = torch.autograd.grad(want.features.sum() + want.opacity.sum(), (c, d))
    close(out[2], want.opacity, dtype, scale=float(S))
    close(g[0], e[0], dtype, scale=2.0)
    close(g[1], e[1], dtype, scale=float(S))


def test_ray_march_short_rays_use_shared_scratch():
    colors, dens, depths = rays((9,), 20, 4, torch.float32, seed=1, device="cpu")
    E()._clear_launch_log()
    out = ray_march(colors.requires_grad_(), dens, depths)
    out[0].sum().backward()
    assert launches("ray_march_backward_kernel")[0].endswith(f"smem={2 * 20 * 4 * 4}")


def test_ray_march_gradcheck():
    colors, dens, depths = rays((3,), 6, 2, torch.float64, seed=4, device="cpu")
    f = lambda c, s: tuple(ray_march(c, s, depths, -1.0, True))  # noqa: E731
    assert torch.autograd.gradcheck(f, (colors.requires_grad_(), dens.requires_grad_()))


@given(R=st.integers(1, 9), S=st.integers(2, 40), C=st.integers(1, 70), dtype=st.sampled_from(DTYPES),
       white=st.booleans(), regime=st.sampled_from(["moderate", "dense", "sparse"]))
def test_ray_march_drawn_shapes(R, S, C, dtype, white, regime):
    colors, dens, depths = rays((R,), S, C, dtype, seed=R * S * C, regime=regime, device="cpu")
    check_ray_march(emu_march, colors, dens, depths, white, seed=C)


def test_ray_march_empty_and_multi_dim():
    colors, dens, depths = rays((0,), 4, 3, torch.float32, device="cpu")
    out = E().ray_march(colors, dens, depths, -1.0, False)
    assert out[0].shape == (0, 3) and out[3].shape == (0, 3)
    colors, dens, depths = rays((2, 3, 2), 5, 3, torch.float32, seed=9, device="cpu")
    out = E().ray_march(colors, dens, depths, -1.0, False)
    want = ops.ray_march(colors, dens, depths, backend="native")
    for got, exp in zip(out, want):
        close(got, exp, torch.float32, scale=5.0)


# ----------------------------------------------------------------------------------------------------------
# rasterize_points


def check_raster_exact(points, features, H, W, dtype, **kw):
    planes, index = E().rasterize_points(points, features, H, W, 1.0, AXES, kw.get("valid"), kw.get("max_distance"),
                                         kw.get("align_corners", False))
    want_planes, want_index = ops.rasterize_points(points, features.to(geom_dtype(dtype)), (H, W),
                                                   backend="native", **kw)
    assert torch.equal(index, want_index), kw  # the pinned arithmetic: the same point everywhere
    assert planes.dtype == dtype
    assert torch.equal(planes, want_planes.to(dtype)), kw  # a gather: exact
    return index


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("H,W,N,C", [(1, 1, 1, 1), (5, 7, 13, 3), (17, 33, 300, 35), (16, 32, 257, 2)])
@pytest.mark.parametrize("align_corners", [False, True])
def test_rasterize_matches_cpu_native_exactly(dtype, H, W, N, C, align_corners):
    points, features = cloud(2, N, C, dtype, seed=H * W + N, device="cpu")
    valid = torch.rand(2, N, generator=torch.Generator().manual_seed(1)) > 0.2
    for kw in ({}, {"valid": valid}, {"max_distance": 0.05}):
        check_raster_exact(points, features, H, W, dtype, align_corners=align_corners, **kw)


@pytest.mark.parametrize("sms,B,split", [(132, 1, True), (1, 3, False)])
def test_rasterize_point_ranges_and_merge(sms, B, split):
    """Few cell tiles and many points: the points split into ranges merged in order; ties across ranges still
    go to the lowest index."""
    # Ranges only while the cell tiles (3 B here) are fewer than 8 blocks per SM.
    points, features = cloud(B, 3000, 4, torch.float32, seed=3, device="cpu")
    points[0, 7] = torch.tensor([0.0, 1 / 12, 0.0])  # on the centre of cell (3, 4) of plane 0 (x 2 / box_warp)
    points[0, 2900] = points[0, 7]  # a duplicate in another range: index 7 must win its cells
    points[0, 100, 0] = float("nan")  # never chosen
    E()._set_sm_count(sms)
    E()._clear_launch_log()
    try:
        index = check_raster_exact(points, features, 6, 9, torch.float32, max_distance=0.3)
    finally:
        E()._set_sm_count(132)
    assert bool(launches("merge_kernel")) == split
    nearest = launches("nearest_kernel")[0]
    assert grid_x(nearest) == capped(3 * B * (3 if split else 1)), nearest  # 3 B tiles, x 3 ranges of 1024
    assert not bool((index == 2900).any()) and not bool((index == 100).any())
    assert int(index[0, 0, 3, 4]) == 7


def test_rasterize_ties_go_to_the_lowest_index():
    pts = torch.tensor([[[0.1, 0.1, 0.1]] * 5])
    feats = torch.arange(5.0).reshape(1, 5, 1)
    _, index = E().rasterize_points(pts, feats, 8, 8, 1.0, AXES, None, None, False)
    assert bool((index == 0).all())


@given(B=st.integers(1, 2), N=st.integers(1, 300), C=st.integers(1, 20), H=st.integers(1, 40),
       W=st.integers(1, 40), dtype=st.sampled_from(DTYPES), align_corners=st.booleans())
def test_rasterize_drawn_shapes(B, N, C, H, W, dtype, align_corners):
    points, features = cloud(B, N, C, dtype, seed=B * N * C + H * W, device="cpu")
    check_raster_exact(points, features, H, W, dtype, align_corners=align_corners)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C", [1, 8, 9, 35, 36])  # 8, 36: float4 atomics (C % 4 == 0)
def test_rasterize_backward(dtype, C):
    points, features = cloud(2, 150, C, dtype, seed=8 + C, device="cpu")
    features.requires_grad_()
    planes, index = rasterize(points, features, 12, 10)
    cot = torch.randn(planes.shape, generator=torch.Generator().manual_seed(C)).to(dtype)
    (got,) = torch.autograd.grad(planes, features, cot)
    ref_f = features.detach().double().requires_grad_()
    want_planes, _ = reference.rasterize_points(points.double(), ref_f, (12, 10))
    (want,) = torch.autograd.grad(want_planes, ref_f, cot.double())
    assert got.dtype == dtype
    close(got, want, dtype, scale=float(cot.abs().max()) * 8)


def test_rasterize_gradcheck():
    points, features = cloud(1, 7, 2, torch.float64, seed=5, device="cpu")
    f = lambda x: rasterize(points, x, 4, 5)[0]  # noqa: E731
    assert torch.autograd.gradcheck(f, (features.requires_grad_(),))


def test_rasterize_empty_inputs():
    points, features = cloud(1, 0, 3, torch.float32, device="cpu")
    planes, index = E().rasterize_points(points, features, 4, 4, 1.0, AXES, None, None, False)
    assert bool((index == -1).all()) and bool((planes == 0).all()) and planes.shape == (1, 3, 3, 4, 4)
    points, features = cloud(1, 6, 0, torch.float32, device="cpu")
    planes, index = E().rasterize_points(points, features, 4, 4, 1.0, AXES, None, None, False)
    assert planes.shape == (1, 3, 0, 4, 4) and bool((index >= 0).all())
    grad = E().rasterize_points_backward(torch.zeros(1, 3, 0, 4, 4), index, 6)
    assert grad.shape == (1, 6, 0)


# ----------------------------------------------------------------------------------------------------------
# the CUDA entry points' own checks and layouts


@pytest.mark.parametrize("case,exc,match", [
    ("triplane_half_points", TypeError, r"points must be float32 when planes is float16, got float16"),
    ("triplane_int_planes", TypeError, r"planes must be float16, bfloat16, float32 or float64 .* got int32"),
    ("ray_march_double_densities", TypeError, r"densities must be float32 when colors is bfloat16, got float64"),
    ("raster_half_points", TypeError, r"points must be float32 when features is float32, got float16"),
])
def test_cuda_entry_points_name_the_bad_argument(case, exc, match):
    if case == "triplane_half_points":
        planes, points = tri_inputs(1, 4, 5, 5, 3, torch.float16, device="cpu")
        call = lambda: E().triplane_sample(planes, points.half(), 1.0, AXES, "mean")  # noqa: E731
    elif case == "triplane_int_planes":
        planes, points = tri_inputs(1, 4, 5, 5, 3, torch.float32, device="cpu")
        call = lambda: E().triplane_sample(planes.int(), points, 1.0, AXES, "mean")  # noqa: E731
    elif case == "ray_march_double_densities":
        colors, dens, depths = rays((2,), 4, 3, torch.bfloat16, device="cpu")
        call = lambda: E().ray_march(colors, dens.double(), depths, -1.0, False)  # noqa: E731
    else:
        points, features = cloud(1, 5, 2, torch.float32, device="cpu")
        call = lambda: E().rasterize_points(points.half(), features, 4, 4, 1.0, AXES, None, None, False)  # noqa: E731
    with pytest.raises(exc, match=match):
        call()


def test_ray_march_non_contiguous():
    colors, dens, depths = rays((6,), 9, 5, torch.float32, seed=12, device="cpu")
    colors_t = colors.transpose(0, 1).contiguous().transpose(0, 1)  # [R, S, C] with R innermost
    dens_s = torch.stack([dens, dens], -1)[..., 0]
    assert not colors_t.is_contiguous() and not dens_s.is_contiguous()
    out = E().ray_march(colors_t, dens_s, depths, -1.0, True)
    want = ops.ray_march(colors, dens, depths, white_background=True, backend="native")
    for got, exp in zip(out, want):
        close(got, exp, torch.float32, scale=9.0)


def test_rasterize_non_contiguous_and_deterministic_mode():
    points, features = cloud(2, 40, 6, torch.float32, seed=13, device="cpu")
    feats_t = features.transpose(1, 2).contiguous().transpose(1, 2)
    pts_t = points.transpose(1, 2).contiguous().transpose(1, 2)
    planes, index = E().rasterize_points(pts_t, feats_t, 7, 9, 1.0, AXES, None, None, False)
    want_planes, want_index = ops.rasterize_points(points, features, (7, 9), backend="native")
    assert torch.equal(index, want_index) and torch.equal(planes, want_planes)
    with deterministic_mode("rasterize_points_backward"):
        E().rasterize_points_backward(torch.ones_like(planes), index, 40)
