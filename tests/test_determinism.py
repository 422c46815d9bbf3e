"""Determinism: for a fixed thread count the native forward and backward are bitwise identical run after run.

The kernels also document that their results do not depend on the thread count (no per-thread partial sums);
`test_independent_of_thread_count` holds them to that.
"""

from __future__ import annotations

import pytest
import torch

from conftest import num_threads
from oneshot import ops

RUNS = 3


def _triplane(dtype):
    g = torch.Generator().manual_seed(0)
    planes = torch.randn(1, 3, 8, 32, 32, dtype=dtype, generator=g)
    points = (torch.rand(1, 4096, 3, dtype=dtype, generator=g) * 2 - 1) * 0.55
    cot = torch.randn(1, 4096, 8, dtype=dtype, generator=g)
    p, x = planes.requires_grad_(), points.requires_grad_()

    def once():
        out = ops.triplane_sample(p, x, backend="native")
        return (out, *torch.autograd.grad(out, (p, x), cot))

    return once


def _ray_march(dtype):
    g = torch.Generator().manual_seed(1)
    R, S, C = 2048, 48, 8
    colors = torch.randn(R, S, C, dtype=dtype, generator=g).requires_grad_()
    dens = (torch.randn(R, S, dtype=dtype, generator=g) * 3).requires_grad_()
    depths = torch.sort(torch.rand(R, S, dtype=dtype, generator=g) * 4 + 1, -1).values
    cots = [torch.randn(s, dtype=dtype, generator=g) for s in ((R, C), (R,), (R,), (R, S - 1))]

    def once():
        out = ops.ray_march(colors, dens, depths, white_background=True, backend="native")
        return (*out, *torch.autograd.grad(out, (colors, dens), cots))

    return once


def _raster(dtype):
    g = torch.Generator().manual_seed(2)
    N, C = 2000, 8
    points = (torch.rand(1, N, 3, dtype=dtype, generator=g) * 2 - 1) * 0.5
    feats = torch.randn(1, N, C, dtype=dtype, generator=g).requires_grad_()
    cot = torch.randn(1, 3, C, 96, 80, dtype=dtype, generator=g)

    def once():
        planes, index = ops.rasterize_points(points, feats, (96, 80), max_distance=0.3, backend="native")
        return planes, index, *torch.autograd.grad(planes, feats, cot)

    return once


CASES = {"triplane_sample": _triplane, "ray_march": _ray_march, "rasterize_points": _raster}


def _assert_identical(a, b, what):
    for i, (x, y) in enumerate(zip(a, b)):
        assert torch.equal(x, y), f"{what}: result {i} differs (max diff {(x.double() - y.double()).abs().max()})"


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("op", list(CASES))
def test_bitwise_reproducible(op, dtype, threads):
    once = CASES[op](dtype)
    with num_threads(threads):
        first = once()
        for _ in range(RUNS - 1):
            _assert_identical(once(), first, f"{op} with {threads} threads")


@pytest.mark.parametrize("op", list(CASES))
def test_independent_of_thread_count(op):
    once = CASES[op](torch.float32)
    with num_threads(1):
        one = once()
    with num_threads(2):
        two = once()
    _assert_identical(two, one, f"{op}: 1 vs 2 threads")
