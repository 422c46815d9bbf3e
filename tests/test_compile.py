"""torch.compile smoke tests: fullgraph compilation of functions that call the public ops, forward and backward,
against eager. aot_eager by default (fast); the inductor test is marked slow (run with -m slow)."""

from __future__ import annotations

import pytest
import torch

from conftest import assert_close
from oneshot import ops


def _inputs(M=7, R=5, N=9, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    u = lambda *s: torch.rand(*s, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    return {
        "planes": r(2, 3, 4, 5, 6),
        "points": u(2, M, 3) - 0.5,
        "colors": r(R, 6, 3),
        "densities": r(R, 6),
        "depths": torch.sort(u(R, 6) * 3 + 1, -1).values,
        "rpoints": u(2, N, 3) * 2 - 1,
        "features": r(2, N, 3),
    }


DIFFERENTIABLE = ("planes", "points", "colors", "densities", "features")


def model(planes, points, colors, densities, depths, rpoints, features):
    y = ops.triplane_sample(planes, points, box_warp=1.5, reduce="sum")
    yn = ops.triplane_sample(planes, points, axes=ops.PLANE_AXES_EG3D, reduce="none")
    out = ops.ray_march(colors, densities, depths, white_background=True)
    pl, index = ops.rasterize_points(rpoints, features, (5, 6), max_distance=0.8, align_corners=True)
    loss = (y.square().sum() + yn.sum() + out.features.square().sum() + 0.3 * out.depth.sum() + out.opacity.sum()
            + out.weights.square().sum() + (pl * pl).sum())
    return loss, index, out.depth


def _run(fn, inputs):
    args = {k: (v.clone().requires_grad_(True) if k in DIFFERENTIABLE else v.clone()) for k, v in inputs.items()}
    loss, index, depth = fn(**args)
    gs = torch.autograd.grad(loss, [args[k] for k in DIFFERENTIABLE])
    return loss, index, depth, gs


def _check(compiled, inputs):
    loss_c, index_c, depth_c, gs_c = _run(compiled, inputs)
    loss_e, index_e, depth_e, gs_e = _run(model, inputs)
    assert torch.equal(index_c, index_e)
    assert_close(loss_c, loss_e, rtol=1e-6, name="loss")
    assert_close(depth_c, depth_e, rtol=1e-6, name="depth")
    for name, a, b in zip(DIFFERENTIABLE, gs_c, gs_e):
        assert_close(a, b, rtol=1e-5, atol=1e-6 * max(1.0, b.abs().max().item()), name=f"grad {name}")


def test_compile_aot_eager_fullgraph():
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    _check(compiled, _inputs())
    _check(compiled, _inputs(M=11, R=3, N=4, seed=1))  # new shapes: recompiles (automatic dynamic)
    _check(compiled, _inputs(M=13, R=8, N=17, seed=2))


@pytest.mark.parametrize("op", ["triplane_sample", "ray_march", "rasterize_points"])
def test_compile_each_op_aot_eager_float64(op):
    torch._dynamo.reset()
    inp = _inputs(dtype=torch.float64, seed=3)

    def fn(**a):
        if op == "triplane_sample":
            return ops.triplane_sample(a["planes"], a["points"], axes=((1, 2), (2, 0), (1, 0)), reduce="mean")
        if op == "ray_march":
            return ops.ray_march(a["colors"], a["densities"], a["depths"], density_bias=0.5).weights
        return ops.rasterize_points(a["rpoints"], a["features"], 4, valid=a["rpoints"][..., 0] > -0.5)[0]

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    outs = []
    for f in (compiled, fn):
        args = {k: (v.clone().requires_grad_(True) if k in DIFFERENTIABLE else v.clone()) for k, v in inp.items()}
        y = f(**args)
        used = [args[k] for k in DIFFERENTIABLE if k in {"triplane_sample": ("planes", "points"),
                                                         "ray_march": ("colors", "densities"),
                                                         "rasterize_points": ("features",)}[op]]
        outs.append((y, torch.autograd.grad(y, used, torch.ones_like(y))))
    (yc, gc), (ye, ge) = outs
    assert torch.equal(yc, ye)
    for a, b in zip(gc, ge):
        assert torch.equal(a, b)


def test_compile_dynamic_true_fullgraph_with_float_arguments():
    # Regression: under dynamic=True dynamo passes float arguments as SymFloat; the argument checks must not
    # graph-break on them (math.isfinite did).
    torch._dynamo.reset()
    inp = _inputs()

    def fn(planes, points):
        tri = ops.triplane_sample(planes, points, box_warp=1.5)
        ras, _ = ops.rasterize_points(points, tri, 5, box_warp=1.5, max_distance=0.7)
        return tri.sum() + ras.sum()

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True, dynamic=True)
    assert torch.equal(compiled(inp["planes"], inp["points"]), fn(inp["planes"], inp["points"]))


@pytest.mark.slow
def test_compile_inductor_fullgraph():
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    _check(compiled, _inputs())
    _check(compiled, _inputs(M=11, R=3, N=4, seed=1))


def test_meta_tensors_infer_shapes():
    """The fake kernels also serve meta tensors: shapes without computing."""
    m = lambda *s: torch.empty(*s, device="meta")  # noqa: E731
    assert ops.triplane_sample(m(2, 3, 4, 5, 6), m(2, 7, 3), reduce="none").shape == (2, 3, 7, 4)
    out = ops.ray_march(m(2, 3, 5, 2), m(2, 3, 5), m(2, 3, 5))
    assert [tuple(t.shape) for t in out] == [(2, 3, 2), (2, 3), (2, 3), (2, 3, 4)]
    planes, index = ops.rasterize_points(m(2, 7, 3), m(2, 7, 3), (4, 5))
    assert planes.shape == (2, 3, 3, 4, 5) and index.shape == (2, 3, 4, 5) and index.dtype == torch.int64
