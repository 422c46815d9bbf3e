"""dtype rules of the ops (16-bit values with float32 geometry), backend choice for them, and autocast.

The "value" tensor of an op (planes, colors, features) may be float16 / bfloat16 while its geometry (points;
densities and depths) stays float32; outputs derived from values come out in the value dtype, the rest in
float32. The reference computes such calls in float32; the native CPU kernels take one dtype per call (auto
falls back to the reference), the CUDA kernels take the mixed pairs (tests/test_cuda.py). Under
torch.autocast, 16-bit geometry is cast to float32, through the public functions and through torch.ops.
"""

from __future__ import annotations

import pytest
import torch

from conftest import assert_close
from oneshot import ops
from oneshot.ops import reference

LOW = [torch.float16, torch.bfloat16]


def _tri(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    planes = torch.randn(2, 3, 5, 6, 7, generator=g)
    points = torch.rand(2, 11, 3, generator=g) * 2.2 - 1.1
    return planes.to(dtype), points


def _rays(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    colors = torch.rand(4, 9, 3, generator=g)
    dens = torch.randn(4, 9, generator=g) * 2
    depths = torch.sort(torch.rand(4, 9, generator=g) + 1, dim=-1).values
    return colors.to(dtype), dens, depths


def _cloud(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    points = torch.rand(2, 30, 3, generator=g) * 2 - 1
    features = torch.randn(2, 30, 4, generator=g)
    return points, features.to(dtype)


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("reduce", ["mean", "sum", "none"])
def test_triplane_16bit_planes_with_float32_points(dtype, reduce):
    planes, points = _tri(dtype)
    planes.requires_grad_()
    points.requires_grad_()
    out = ops.triplane_sample(planes, points, reduce=reduce)
    assert out.dtype == dtype
    # Computed in float32 and rounded once.
    want = reference.triplane_sample(planes.detach().float(), points.detach(), reduce=reduce).to(dtype)
    assert torch.equal(out, want)
    gp, gx = torch.autograd.grad(out.float().sum(), (planes, points))
    assert gp.dtype == dtype and gx.dtype == torch.float32
    assert torch.isfinite(gx).all()


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("white", [False, True])
def test_ray_march_16bit_colors_with_float32_densities(dtype, white):
    colors, dens, depths = _rays(dtype)
    out = ops.ray_march(colors, dens, depths, white_background=white)
    assert out.features.dtype == dtype
    assert out.depth.dtype == out.opacity.dtype == out.weights.dtype == torch.float32
    want = ops.ray_march(colors.float(), dens, depths, white_background=white, backend="reference")
    assert torch.equal(out.features, want.features.to(dtype))
    for name in ("depth", "opacity", "weights"):
        assert torch.equal(getattr(out, name), getattr(want, name)), name


@pytest.mark.parametrize("dtype", LOW)
def test_rasterize_16bit_features_with_float32_points(dtype):
    points, features = _cloud(dtype)
    planes, index = ops.rasterize_points(points, features, 8)
    assert planes.dtype == dtype
    want_planes, want_index = ops.rasterize_points(points, features.float(), 8)
    assert torch.equal(index, want_index)  # the search runs on the float32 points either way
    assert torch.equal(planes, want_planes.to(dtype))  # a gather: exact


def test_auto_backend_on_cpu_falls_back_for_mixed_dtypes_and_native_says_why():
    planes, points = _tri(torch.bfloat16)
    assert ops.triplane_sample(planes, points).dtype == torch.bfloat16
    with pytest.raises(TypeError, match=r"backend='native' supports float32, float64 on cpu for triplane_sample, "
                                        r"got torch\.bfloat16 with torch\.float32 geometry"):
        ops.triplane_sample(planes, points, backend="native")
    colors, dens, depths = _rays(torch.float16)
    assert ops.ray_march(colors, dens, depths).features.dtype == torch.float16
    with pytest.raises(TypeError, match=r"backend='native' supports float32, float64 on cpu for ray_march, "
                                        r"got torch\.float16$"):
        ops.ray_march(colors, dens.half(), depths.half(), backend="native")


@pytest.mark.parametrize(
    "call, pattern",
    [
        (lambda: ops.triplane_sample(*_tri(torch.float32)[:1], _tri(torch.float32)[1].half()),
         r"points must have the dtype of planes \(torch\.float32\), got torch\.float16"),
        (lambda: ops.triplane_sample(_tri(torch.float16)[0], _tri(torch.float16)[1].double()),
         r"points must have the dtype of planes \(torch\.float16\) or torch\.float32, got torch\.float64"),
        (lambda: ops.ray_march(_rays(torch.bfloat16)[0], _rays(torch.bfloat16)[1], _rays(torch.bfloat16)[2].half()),
         r"depths must have the dtype of colors \(torch\.bfloat16\) or torch\.float32, got torch\.float16"),
        (lambda: ops.ray_march(_rays(torch.float16)[0], _rays(torch.float16)[1], _rays(torch.float16)[2].half()),
         r"depths must have the dtype of densities \(torch\.float32\), got torch\.float16"),
        (lambda: ops.rasterize_points(_cloud(torch.float32)[0].bfloat16(), _cloud(torch.float32)[1], 4),
         r"points must have the dtype of features \(torch\.float32\), got torch\.bfloat16"),
    ],
    ids=["tri-half-points", "tri-double-points", "rm-half-depths", "rm-geometry-mismatch", "ras-bf16-points"],
)
def test_bad_dtype_pairs(call, pattern):
    with pytest.raises(TypeError, match=pattern):
        call()


def test_autocast_casts_geometry_to_float32_in_the_public_functions():
    planes, points = _tri(torch.float32)
    colors, dens, depths = _rays(torch.float32)
    cloud_points, features = _cloud(torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tri = ops.triplane_sample(planes, points.bfloat16())
        rays = ops.ray_march(colors, dens.bfloat16(), depths.bfloat16())
        ras, idx = ops.rasterize_points(cloud_points.bfloat16(), features, 6)
    assert tri.dtype == torch.float32
    assert_close(tri, ops.triplane_sample(planes, points.bfloat16().float()), rtol=0, atol=0)
    assert rays.features.dtype == rays.depth.dtype == torch.float32
    want = ops.ray_march(colors, dens.bfloat16().float(), depths.bfloat16().float())
    assert torch.equal(rays.features, want.features) and torch.equal(rays.depth, want.depth)
    assert torch.equal(idx, ops.rasterize_points(cloud_points.bfloat16().float(), features, 6)[1])
    # Outside autocast the same call is an error.
    with pytest.raises(TypeError, match=r"densities must have the dtype of colors"):
        ops.ray_march(colors, dens.bfloat16(), depths.bfloat16())


@pytest.mark.skipif(not ops.backend_info()["native_cpu"], reason="needs the compiled extension")
def test_autocast_rule_of_the_registered_ops():
    colors, dens, depths = _rays(torch.float32)
    with pytest.raises(TypeError, match=r"densities must have the dtype of colors"):
        torch.ops.oneshot.ray_march(colors, dens.bfloat16(), depths, -1.0, False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = torch.ops.oneshot.ray_march(colors, dens.bfloat16(), depths.bfloat16(), -1.0, False)
    want = torch.ops.oneshot.ray_march(colors, dens.bfloat16().float(), depths.bfloat16().float(), -1.0, False)
    for a, b in zip(out, want):
        assert a.dtype == torch.float32 and torch.equal(a, b)
    planes, points = _tri(torch.float32)
    axes = [0, 1, 0, 2, 2, 1]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tri = torch.ops.oneshot.triplane_sample(planes, points.bfloat16(), 1.0, axes, "mean")
    assert torch.equal(tri, torch.ops.oneshot.triplane_sample(planes, points.bfloat16().float(), 1.0, axes, "mean"))
    cloud_points, features = _cloud(torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, idx = torch.ops.oneshot.rasterize_points(cloud_points.bfloat16(), features, 5, 5, 1.0, axes, None, None,
                                                    False)
    want_idx = torch.ops.oneshot.rasterize_points(cloud_points.bfloat16().float(), features, 5, 5, 1.0, axes, None,
                                                  None, False)[1]
    assert torch.equal(idx, want_idx)


@pytest.mark.skipif(not ops.backend_info()["native_cpu"], reason="needs the compiled extension")
@pytest.mark.parametrize("dtype", LOW)
def test_fake_kernels_give_the_mixed_output_dtypes(dtype):
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        colors = torch.empty(4, 9, 3, dtype=dtype)
        dens = torch.empty(4, 9)
        feat, depth, opacity, weights = torch.ops.oneshot.ray_march(colors, dens, dens, -1.0, False)
        gc, gs = torch.ops.oneshot.ray_march_backward(feat, depth, opacity, weights, colors, dens, dens, -1.0, False)
        planes = torch.empty(1, 3, 4, 5, 5, dtype=dtype)
        points = torch.empty(1, 7, 3)
        out = torch.ops.oneshot.triplane_sample(planes, points, 1.0, [0, 1, 0, 2, 2, 1], "none")
        gp, gx = torch.ops.oneshot.triplane_sample_backward(out, planes, points, 1.0, [0, 1, 0, 2, 2, 1], "none",
                                                            True, True)
        features = torch.empty(1, 7, 2, dtype=dtype)
        rp, ri = torch.ops.oneshot.rasterize_points(points, features, 4, 4, 1.0, [0, 1, 0, 2, 2, 1], None, None,
                                                    False)
    assert feat.dtype == gc.dtype == dtype
    assert depth.dtype == opacity.dtype == weights.dtype == gs.dtype == torch.float32
    assert out.dtype == gp.dtype == dtype and gx.dtype == torch.float32
    assert rp.dtype == dtype and ri.dtype == torch.int64
