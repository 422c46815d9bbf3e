"""The cache of large CPU output buffers (csrc/common/cpu_buffers.h, oneshot.ops.empty_cpu_cache).

Outputs of 32 MiB and more come from blocks that return to a bounded cache when the tensor dies and are handed
out again, already mapped, to the next call of the same size. A recycled block holds the previous call's data,
so these tests check that every kernel that uses the cache writes every element of its output.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from oneshot import ops
from oneshot.ops import reference

from conftest import assert_close

pytestmark = pytest.mark.skipif(not ops.backend_info()["native_cpu"], reason="needs the compiled extension")

BIG = 32 << 20  # the cache's threshold in bytes


def _ray_inputs(seed: int):
    g = torch.Generator().manual_seed(seed)
    R, S, C = 1024, 64, 129  # 33.8 MB of float32 colors: the gradient comes from the cache
    assert R * S * C * 4 >= BIG
    colors = torch.rand(R, S, C, generator=g)
    dens = torch.randn(R, S, generator=g) * 3
    depths = torch.sort(torch.rand(R, S, generator=g) * 2 + 0.5, dim=-1).values
    return colors, dens, depths


def test_recycled_ray_march_gradient_is_fully_written():
    ops.empty_cpu_cache()
    got = []
    for seed in (0, 1):
        colors, dens, depths = _ray_inputs(seed)
        gf = torch.randn(colors.shape[0], colors.shape[-1], generator=torch.Generator().manual_seed(seed + 10))
        gc, gs = torch.ops.oneshot.ray_march_backward(gf, None, None, None, colors, dens, depths, -1.0, False)
        got.append((gc.clone(), gs.clone(), colors, dens, depths, gf))
        if seed == 0:
            gc.fill_(float("nan"))  # poison the block before it goes back to the cache
        del gc, gs
    gc, gs, colors, dens, depths, gf = got[1]
    colors = colors.double().requires_grad_()
    dens = dens.double().requires_grad_()
    out = reference.ray_march(colors, dens, depths.double())
    want_c, want_s = torch.autograd.grad(out[0], (colors, dens), gf.double())
    assert torch.isfinite(gc).all()
    assert_close(gc, want_c.float(), rtol=1e-5, atol=1e-6)
    assert_close(gs, want_s.float(), rtol=1e-4, atol=1e-5)


def test_recycled_ray_march_gradient_without_grad_features_is_zero():
    ops.empty_cpu_cache()
    colors, dens, depths = _ray_inputs(2)
    gf = torch.randn(colors.shape[0], colors.shape[-1])
    gc, _ = torch.ops.oneshot.ray_march_backward(gf, None, None, None, colors, dens, depths, -1.0, False)
    gc.fill_(float("nan"))
    del gc
    go = torch.randn(colors.shape[0])
    gc, _ = torch.ops.oneshot.ray_march_backward(None, None, go, None, colors, dens, depths, -1.0, False)
    assert bool((gc == 0).all())


def test_recycled_rasterized_planes_are_fully_written():
    ops.empty_cpu_cache()
    g = torch.Generator().manual_seed(3)
    points = torch.rand(1, 500, 3, generator=g) * 2 - 1
    features = torch.randn(1, 500, 40, generator=g)
    assert 3 * 40 * 300 * 300 * 4 >= BIG
    planes, _ = ops.rasterize_points(points, features, 300, backend="native", max_distance=0.05)
    planes.fill_(float("nan"))
    del planes
    planes, index = ops.rasterize_points(points, features, 300, backend="native", max_distance=0.05)
    want_planes, want_index = reference.rasterize_points(points, features, (300, 300), max_distance=0.05)
    assert torch.equal(index, want_index)
    assert torch.equal(planes, want_planes)  # a pure gather: exact


def test_recycled_triplane_gradient_is_fully_written():
    ops.empty_cpu_cache()
    g = torch.Generator().manual_seed(4)
    planes = torch.randn(1, 3, 33, 300, 300, generator=g)  # 35.6 MB gradient
    points = (torch.rand(1, 200, 3, generator=g) * 2 - 1).mul(1.1)
    grad_out = torch.randn(1, 200, 33, generator=g)
    gp, _ = torch.ops.oneshot.triplane_sample_backward(grad_out, planes, points, 1.0, [0, 1, 0, 2, 2, 1], "mean",
                                                       True, False)
    gp.fill_(float("nan"))
    del gp
    gp, _ = torch.ops.oneshot.triplane_sample_backward(grad_out, planes, points, 1.0, [0, 1, 0, 2, 2, 1], "mean",
                                                       True, False)
    ref_planes = planes.clone().requires_grad_()
    want = torch.autograd.grad(reference.triplane_sample(ref_planes, points), ref_planes, grad_out)[0]
    assert torch.isfinite(gp).all()
    assert_close(gp, want, rtol=1e-5, atol=1e-6)


def test_empty_cpu_cache_frees_only_unused_blocks():
    ops.empty_cpu_cache()
    colors, dens, depths = _ray_inputs(5)
    gf = torch.randn(colors.shape[0], colors.shape[-1])
    gc, _ = torch.ops.oneshot.ray_march_backward(gf, None, None, None, colors, dens, depths, -1.0, False)
    keep = gc.clone()
    assert ops.empty_cpu_cache() == 0  # the block is in use: nothing to free
    assert torch.equal(gc, keep)
    nbytes = gc.nbytes
    del gc
    freed = ops.empty_cpu_cache()
    assert nbytes <= freed < nbytes + (2 << 20)  # rounded up to 2 MiB
    assert ops.empty_cpu_cache() == 0


@pytest.mark.parametrize("setting, cached", [("0", False), ("16", False), ("64", True)])
def test_cache_limit_from_environment(setting, cached):
    code = textwrap.dedent(
        """
        import torch
        from oneshot import ops
        colors = torch.rand(1024, 64, 129)
        dens = torch.randn(1024, 64)
        depths = torch.linspace(0.5, 1.5, 64).expand(1024, 64).contiguous()
        gc, _ = torch.ops.oneshot.ray_march_backward(torch.randn(1024, 129), None, None, None, colors, dens,
                                                     depths, -1.0, False)
        del gc
        print(ops.empty_cpu_cache())
        """
    )
    env = dict(os.environ, ONESHOT_CPU_CACHE_MB=setting)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    freed = int(out.stdout.strip().splitlines()[-1])
    assert (freed > 0) == cached, (setting, freed)
