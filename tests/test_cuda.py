"""The CUDA kernels: against the reference (float64 oracle) and the native CPU kernels, forward and backward,
every dtype with its own tolerance, odd shapes, non-contiguous inputs, gradcheck, opcheck, autocast, empty
inputs and a second device. Skipped, with the reason, on machines without a GPU or without the CUDA build.

Tolerances: float32/float64 as in the CPU tests (a few ulp per operation, scaled by the size of the sums);
float16/bfloat16 values are rounded once on input and once on output (accumulation is float32), so the bound
is a few units of the 16-bit epsilon times the magnitude of the result.
"""

from __future__ import annotations

import pytest
import torch

from conftest import assert_close, deterministic_mode, grads
from oneshot import ops
from oneshot.ops import RayMarchResult, reference

HAS_CUDA = torch.cuda.is_available()
pytestmark = pytest.mark.skipif(
    not HAS_CUDA or not ops.backend_info()["native_cuda"],
    reason="needs a CUDA GPU and the extension built with CUDA (FORCE_CUDA=1 pip install --no-build-isolation .)",
)

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
AXES = [0, 1, 0, 2, 2, 1]


def geom_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def tol(dtype, scale=1.0):
    """(rtol, atol) for a result of magnitude ~scale computed from values of `dtype`."""
    e = {torch.float64: 1e-12, torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}[dtype]
    return e, e * scale


def close(a, b, dtype, scale=1.0, name="tensor"):
    rtol, atol = tol(dtype, scale)
    assert_close(a.double().cpu(), b.double().cpu(), rtol=rtol, atol=atol, name=name)


# ----------------------------------------------------------------------------------------------------------
# triplane_sample


def tri_inputs(B, C, H, W, M, dtype, seed=0, device="cuda"):
    g = torch.Generator().manual_seed(seed)
    planes = torch.randn(B, 3, C, H, W, generator=g, dtype=torch.float64)
    points = (torch.rand(B, M, 3, generator=g, dtype=torch.float64) * 2.4 - 1.2)  # some outside the box
    return planes.to(device, dtype), points.to(device, geom_dtype(dtype))


def check_triplane(sample, planes, points, dtype, reduce="mean", grads=(True, True), seed=0):
    """sample(planes, points, reduce) (differentiable) against the float64 reference, forward and backward; grads
    says which of (planes, points) require a gradient. The cotangent is rounded to `dtype` for both."""
    planes = planes.detach().requires_grad_(grads[0])
    points = points.detach().requires_grad_(grads[1])
    out = sample(planes, points, reduce)
    assert out.dtype == dtype
    rp = planes.detach().double().cpu().requires_grad_()
    rx = points.detach().double().cpu().requires_grad_()
    want = reference.triplane_sample(rp, rx, reduce=reduce)
    close(out, want, dtype, scale=3.0, name="out")
    if out.numel() == 0:
        return
    cot = torch.randn(want.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)
    inputs = [t for t, g in zip((planes, points), grads) if g]
    got = torch.autograd.grad(out, inputs, cot.to(out.device))
    exp = dict(zip(("planes", "points"), torch.autograd.grad(want, (rp, rx), cot.double())))
    C, H, W = planes.shape[2:]
    # d/d(points) scales with the plane size (pixel = (c + 1) * size / 2).
    scale = float(cot.abs().max())
    scales = {"planes": scale * 4, "points": scale * max(H, W) * C * 4}
    for name, g in zip([n for n, w in zip(("planes", "points"), grads) if w], got):
        assert g.dtype == (dtype if name == "planes" else geom_dtype(dtype))
        close(g, exp[name], dtype, scale=scales[name], name=f"grad {name}")


def native_sample(planes, points, reduce):
    return ops.triplane_sample(planes, points, reduce=reduce, backend="native")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduce", ["mean", "sum", "none"])
@pytest.mark.parametrize("B,C,H,W,M", [(1, 1, 1, 1, 5), (2, 3, 5, 7, 33), (1, 32, 16, 16, 257), (2, 33, 9, 31, 100),
                                       (1, 8, 64, 32, 1000)])
def test_triplane_matches_reference(dtype, reduce, B, C, H, W, M):
    planes, points = tri_inputs(B, C, H, W, M, dtype, seed=C + M)
    check_triplane(native_sample, planes, points, dtype, reduce, seed=M)


def test_triplane_cuda_matches_cpu_native():
    planes, points = tri_inputs(2, 32, 64, 64, 5000, torch.float32, seed=3)
    out = ops.triplane_sample(planes, points, backend="native")
    cpu = ops.triplane_sample(planes.cpu(), points.cpu(), backend="native")
    close(out, cpu, torch.float32, scale=3.0)


@pytest.mark.parametrize("layout", ["channels_first", "strided_points"])
def test_triplane_non_contiguous(layout):
    planes, points = tri_inputs(2, 8, 12, 10, 50, torch.float32, seed=5)
    if layout == "channels_first":
        planes = planes.contiguous()  # [B, 3, C, H, W] with stride(2) != 1: converted by the wrapper
    else:
        points = torch.cat([points, points], dim=-1)[..., ::2]
    out = ops.triplane_sample(planes, points, backend="native")
    close(out, reference.triplane_sample(planes.double(), points.double()), torch.float32, scale=3.0)


def test_triplane_gradcheck():
    planes, points = tri_inputs(1, 3, 4, 5, 6, torch.float64, seed=7)
    points = points * 0.8
    f = lambda p, x: ops.triplane_sample(p, x, reduce="none", backend="native")  # noqa: E731
    assert torch.autograd.gradcheck(f, (planes.requires_grad_(), points.requires_grad_()))


def test_triplane_deterministic_mode_reports_the_atomic_backward():
    planes, points = tri_inputs(1, 4, 8, 8, 20, torch.float32)
    planes.requires_grad_()
    out = ops.triplane_sample(planes, points, backend="native")
    with deterministic_mode("triplane_sample_backward"):
        out.sum().backward()


# ----------------------------------------------------------------------------------------------------------
# ray_march


def rays(lead, S, C, dtype, seed=0, regime="moderate", device="cuda"):
    g = torch.Generator().manual_seed(seed)
    colors = torch.rand(*lead, S, C, generator=g, dtype=torch.float64)
    scale, shift = {"moderate": (2.0, 1.0), "dense": (5.0, 12.0), "sparse": (3.0, -12.0)}[regime]
    dens = torch.randn(*lead, S, generator=g, dtype=torch.float64) * scale + shift
    depths = torch.sort(torch.rand(*lead, S, generator=g, dtype=torch.float64) * 2 + 1, dim=-1).values
    gd = geom_dtype(dtype)
    return colors.to(device, dtype), dens.to(device, gd), depths.to(device, gd)


def check_ray_march(march, colors, dens, depths, white=False, which=(0, 1, 2, 3), seed=0):
    """march(colors, densities, depths, white) -> the 4 outputs (differentiable), against the reference.

    The reference runs in the geometry dtype (float32 for 16-bit colors, upcast exactly) with the tolerance model
    of test_raymarch (per ray, K S eps, the 1 / opacity conditioning of depth explicit); features and the colors'
    gradient of 16-bit colors also carry the rounding of the result to that dtype. Cotangents go to the outputs
    in `which` only (the others get None, as autograd passes them to the backward).
    """
    from test_raymarch import _tolerances

    dtype, gdt = colors.dtype, geom_dtype(colors.dtype)
    c = colors.detach().requires_grad_()
    d = dens.detach().requires_grad_()
    out = march(c, d, depths, white)
    assert out[0].dtype == dtype and all(o.dtype == gdt for o in out[1:])
    rc = colors.detach().to(gdt).cpu().requires_grad_()
    rd = dens.detach().cpu().requires_grad_()
    want = reference.ray_march(rc, rd, depths.cpu(), -1.0, white)
    g = torch.Generator().manual_seed(seed)
    # Each cotangent in the dtype of its output (features: the colors' dtype), the same values for the reference.
    cots = [torch.randn(w.shape, generator=g, dtype=torch.float64).to(o.dtype).to(gdt) if i in which else None
            for i, (w, o) in enumerate(zip(want, out))]
    got = grads(out, (c, d), [None if x is None else x.to(o) for x, o in zip(cots, out)])
    exp = grads(want, (rc, rd), cots)
    out_cpu = RayMarchResult(*(o.detach().cpu().to(w.dtype) for o, w in zip(out, want)))
    tol = _tolerances(rc, depths.cpu(), RayMarchResult(*want), out_cpu, cots, gdt)
    if dtype != gdt:  # one rounding to float16 / bfloat16 of the float32 result
        half_ulp = torch.finfo(dtype).eps / 2
        tol["features"] = tol["features"] + half_ulp * want[0].detach().abs().to(torch.float64)
        tol["grad_colors"] = tol["grad_colors"] + half_ulp * exp[0].abs().to(torch.float64)
    for name, o, w in zip(RayMarchResult._fields, out_cpu, want):
        assert_close(o, w.detach(), atol=tol[name], name=name)
    assert got[0].dtype == dtype and got[1].dtype == gdt
    assert_close(got[0].cpu().to(gdt), exp[0], atol=tol["grad_colors"], name="grad colors")
    assert_close(got[1].cpu(), exp[1], atol=tol["grad_densities"], name="grad densities")


def native_march(c, s, t, white):
    return ops.ray_march(c, s, t, white_background=white, backend="native")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("white", [False, True])
@pytest.mark.parametrize("lead,S,C,regime", [((7,), 2, 1, "moderate"), ((3, 5), 17, 3, "dense"),
                                             ((64,), 96, 32, "moderate"), ((9,), 33, 65, "sparse"),
                                             ((4,), 40, 300, "moderate")])
def test_ray_march_matches_reference(dtype, white, lead, S, C, regime):
    colors, dens, depths = rays(lead, S, C, dtype, seed=S * C, regime=regime)
    check_ray_march(native_march, colors, dens, depths, white, seed=S)


def test_ray_march_cuda_matches_cpu_native():
    colors, dens, depths = rays((1024,), 96, 32, torch.float32, seed=11)
    out = ops.ray_march(colors, dens, depths, backend="native")
    cpu = ops.ray_march(colors.cpu(), dens.cpu(), depths.cpu(), backend="native")
    for name in out._fields:
        close(getattr(out, name), getattr(cpu, name), torch.float32, scale=96.0, name=name)


def test_ray_march_long_rays_use_global_scratch():
    colors, dens, depths = rays((3,), 7000, 2, torch.float32, seed=2, regime="sparse")
    colors.requires_grad_()
    dens.requires_grad_()
    out = ops.ray_march(colors, dens, depths, backend="native")
    want = ops.ray_march(colors.detach().cpu(), dens.detach().cpu(), depths.cpu(), backend="native")
    close(out.opacity, want.opacity, torch.float32, scale=7000.0)
    g = torch.autograd.grad(out.features.sum() + out.opacity.sum(), (colors, dens))
    c, d = colors.detach().cpu().requires_grad_(), dens.detach().cpu().requires_grad_()
    w = ops.ray_march(c, d, depths.cpu(), backend="native")
    e = torch.autograd.grad(w.features.sum() + w.opacity.sum(), (c, d))
    close(g[0], e[0], torch.float32, scale=2.0)
    close(g[1], e[1], torch.float32, scale=7000.0)


def test_ray_march_gradcheck():
    colors, dens, depths = rays((3,), 6, 2, torch.float64, seed=4)
    f = lambda c, s: tuple(ops.ray_march(c, s, depths, white_background=True, backend="native"))  # noqa: E731
    assert torch.autograd.gradcheck(f, (colors.requires_grad_(), dens.requires_grad_()))


def test_ray_march_autocast_casts_densities():
    colors, dens, depths = rays((16,), 12, 4, torch.float32, seed=6)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = torch.ops.oneshot.ray_march(colors.bfloat16(), dens.bfloat16(), depths, -1.0, False)
    assert out[0].dtype == torch.bfloat16 and out[1].dtype == torch.float32


# ----------------------------------------------------------------------------------------------------------
# rasterize_points


def cloud(B, N, C, dtype, seed=0, device="cuda"):
    g = torch.Generator().manual_seed(seed)
    points = torch.rand(B, N, 3, generator=g, dtype=torch.float64) * 2.2 - 1.1
    features = torch.randn(B, N, C, generator=g, dtype=torch.float64)
    return points.to(device, geom_dtype(dtype)), features.to(device, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("H,W,N,C", [(1, 1, 1, 1), (5, 7, 13, 3), (128, 128, 4000, 32), (33, 17, 300, 65)])
@pytest.mark.parametrize("align_corners", [False, True])
def test_rasterize_matches_cpu_native_exactly(dtype, H, W, N, C, align_corners):
    points, features = cloud(2, N, C, dtype, seed=H * W + N)
    valid = torch.rand(2, N, generator=torch.Generator().manual_seed(1)) > 0.2
    for kw in ({}, {"valid": valid.cuda()}, {"max_distance": 0.05}):
        planes, index = ops.rasterize_points(points, features, (H, W), align_corners=align_corners,
                                             backend="native", **kw)
        cpu_kw = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
        want_planes, want_index = ops.rasterize_points(points.cpu(), features.cpu().to(geom_dtype(dtype)), (H, W),
                                                       align_corners=align_corners, **cpu_kw)
        assert torch.equal(index.cpu(), want_index), kw  # the pinned arithmetic: the same point everywhere
        assert planes.dtype == dtype
        assert torch.equal(planes.cpu(), want_planes.to(dtype)), kw  # a gather: exact


def test_rasterize_ties_go_to_the_lowest_index():
    pts = torch.tensor([[[0.1, 0.1, 0.1]] * 5], device="cuda")
    feats = torch.arange(5.0, device="cuda").reshape(1, 5, 1)
    _, index = ops.rasterize_points(pts, feats, 8, backend="native")
    assert bool((index == 0).all())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C", [9, 8])  # 8: four channels a float4 atomic
def test_rasterize_backward(dtype, C):
    points, features = cloud(2, 500, C, dtype, seed=8)
    features.requires_grad_()
    planes, index = ops.rasterize_points(points, features, 32, backend="native")
    cot = torch.randn(planes.shape, device="cuda").to(dtype)
    (got,) = torch.autograd.grad(planes, features, cot)
    ref_f = features.detach().double().requires_grad_()
    want_planes, _ = reference.rasterize_points(points.double(), ref_f, (32, 32))
    (want,) = torch.autograd.grad(want_planes, ref_f, cot.double())
    close(got, want, dtype, scale=float(cot.abs().max()) * 8)


def test_rasterize_speed_shape_runs_without_a_dense_matrix():
    points, features = cloud(1, 16384, 32, torch.float32, seed=9)
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    planes, index = ops.rasterize_points(points, features, 128, backend="native")
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    outputs = planes.nbytes + index.nbytes
    assert peak < outputs + 64 * 2**20, (peak, outputs)  # a cells x points matrix would be 1 GiB per plane


# ----------------------------------------------------------------------------------------------------------
# every op


@pytest.mark.parametrize("op", ["triplane", "raymarch", "raster"])
def test_opcheck_on_cuda(op):
    if op == "triplane":
        planes, points = tri_inputs(1, 3, 4, 5, 6, torch.float64)
        torch.library.opcheck(torch.ops.oneshot.triplane_sample.default,
                              (planes.requires_grad_(), points.requires_grad_(), 1.0, AXES, "mean"))
    elif op == "raymarch":
        colors, dens, depths = rays((3,), 5, 2, torch.float64)
        torch.library.opcheck(torch.ops.oneshot.ray_march.default,
                              (colors.requires_grad_(), dens.requires_grad_(), depths, -1.0, False))
    else:
        points, features = cloud(1, 7, 2, torch.float64)
        torch.library.opcheck(torch.ops.oneshot.rasterize_points.default,
                              (points, features.requires_grad_(), 4, 4, 1.0, AXES, None, None, False))


def test_empty_inputs_on_cuda():
    planes, points = tri_inputs(1, 4, 5, 5, 0, torch.float32)
    assert ops.triplane_sample(planes, points, backend="native").shape == (1, 0, 4)
    colors, dens, depths = rays((0,), 4, 3, torch.float32)
    out = ops.ray_march(colors, dens, depths, backend="native")
    assert out.features.shape == (0, 3) and out.weights.shape == (0, 3)
    points, features = cloud(1, 0, 3, torch.float32)
    planes, index = ops.rasterize_points(points, features, 4, backend="native")
    assert bool((index == -1).all()) and bool((planes == 0).all())


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs a second GPU")
def test_second_device():
    dev = torch.device("cuda", 1)
    planes, points = tri_inputs(1, 8, 9, 9, 50, torch.float32, device=dev)
    out = ops.triplane_sample(planes, points, backend="native")
    assert out.device == dev
    close(out, ops.triplane_sample(planes.cpu(), points.cpu(), backend="native"), torch.float32, scale=3.0)
    colors, dens, depths = rays((8,), 9, 4, torch.float32, device=dev)
    assert ops.ray_march(colors, dens, depths, backend="native").features.device == dev
    points, features = cloud(1, 40, 3, torch.float32, device=dev)
    _, index = ops.rasterize_points(points, features, 8, backend="native")
    assert torch.equal(index.cpu(), ops.rasterize_points(points.cpu(), features.cpu(), 8)[1])
