"""Every bad input raises ValueError or TypeError naming the argument (and what arrived); unavailable backends
raise clearly. The C++ entry points (callable directly as torch.ops.oneshot.*) check their inputs too."""

from __future__ import annotations

import re

import pytest
import torch

from oneshot import ops

f32, f64 = torch.float32, torch.float64


def P(*s, dtype=f32, device="cpu"):  # noqa: N802
    return torch.zeros(*s, dtype=dtype, device=device)


# (id, callable, exception type, regex the message must match)
TRIPLANE = [
    ("planes-not-tensor", lambda: ops.triplane_sample([[0.0]], P(1, 5, 3)), TypeError, r"planes must be a torch\.Tensor"),
    ("planes-rank", lambda: ops.triplane_sample(P(3, 2, 4, 4), P(1, 5, 3)), ValueError,
     r"planes must be \[B, 3, C, H, W\], got \[3, 2, 4, 4\]"),
    ("planes-not-3", lambda: ops.triplane_sample(P(1, 2, 2, 4, 4), P(1, 5, 3)), ValueError,
     r"planes must be \[B, 3, C, H, W\], got \[1, 2, 2, 4, 4\]"),
    ("points-rank", lambda: ops.triplane_sample(P(1, 3, 2, 4, 4), P(5, 3)), ValueError,
     r"points must be \[B, M, 3\], got \[5, 3\]"),
    ("points-trailing", lambda: ops.triplane_sample(P(1, 3, 2, 4, 4), P(1, 5, 2)), ValueError,
     r"points must be \[B, M, 3\], got \[1, 5, 2\]"),
    ("batch", lambda: ops.triplane_sample(P(1, 3, 2, 4, 4), P(2, 5, 3)), ValueError,
     r"points must have the batch size of planes \(1\), got 2"),
    ("dtype-mismatch", lambda: ops.triplane_sample(P(1, 3, 2, 4, 4), P(1, 5, 3, dtype=f64)), TypeError,
     r"points must have the dtype of planes \(torch\.float32\), got torch\.float64"),
    ("planes-int", lambda: ops.triplane_sample(P(1, 3, 2, 4, 4, dtype=torch.int32), P(1, 5, 3)), TypeError,
     r"planes must be a floating-point tensor, got torch\.int32"),
    ("points-int", lambda: ops.triplane_sample(P(1, 3, 2, 4, 4), P(1, 5, 3, dtype=torch.int64)), TypeError,
     r"points must be a floating-point tensor, got torch\.int64"),
    ("device", lambda: ops.triplane_sample(P(1, 3, 2, 4, 4), P(1, 5, 3, device="meta")), ValueError,
     r"points must be on the device of planes \(cpu\), got meta"),
    ("reduce", lambda: ops.triplane_sample(P(1, 3, 2, 4, 4), P(1, 5, 3), reduce="max"), ValueError,
     r"reduce must be one of .*'mean'.*got 'max'"),
    ("backend", lambda: ops.triplane_sample(P(1, 3, 2, 4, 4), P(1, 5, 3), backend="cuda"), ValueError,
     r"backend must be one of .*got 'cuda'"),
    ("box_warp-zero", lambda: ops.triplane_sample(P(1, 3, 2, 4, 4), P(1, 5, 3), box_warp=0), ValueError,
     r"box_warp must be a positive finite number, got 0"),
    ("box_warp-negative", lambda: ops.triplane_sample(P(1, 3, 2, 4, 4), P(1, 5, 3), box_warp=-1.0), ValueError,
     r"box_warp must be a positive"),
    ("box_warp-nan", lambda: ops.triplane_sample(P(1, 3, 2, 4, 4), P(1, 5, 3), box_warp=float("nan")), ValueError,
     r"box_warp must be a positive"),
    ("box_warp-inf", lambda: ops.triplane_sample(P(1, 3, 2, 4, 4), P(1, 5, 3), box_warp=float("inf")), ValueError,
     r"box_warp must be a positive"),
    ("box_warp-str", lambda: ops.triplane_sample(P(1, 3, 2, 4, 4), P(1, 5, 3), box_warp="1"), TypeError,
     r"box_warp must be a positive number, got str"),
    ("box_warp-bool", lambda: ops.triplane_sample(P(1, 3, 2, 4, 4), P(1, 5, 3), box_warp=True), TypeError,
     r"box_warp must be a positive number, got bool"),
]

BAD_AXES = [
    ((0, 1), (0, 2)),  # two planes
    ((0, 1), (0, 2), (2, 1), (1, 0)),  # four planes
    ((0, 0), (0, 2), (2, 1)),  # a repeated coordinate
    ((0, 3), (0, 2), (2, 1)),  # out of range
    ((0, -1), (0, 2), (2, 1)),
    ((0, 1, 2), (0, 2), (2, 1)),  # a triple
    ((True, 1), (0, 2), (2, 1)),  # a bool is not a coordinate
    ((0.0, 1), (0, 2), (2, 1)),  # nor a float
    (0, 1, 2),
    None,
    "xyz",
]

RAY_MARCH = [
    ("colors-not-tensor", lambda: ops.ray_march([[0.0, 0.0]], P(2), P(2)), TypeError, r"colors must be a torch\.Tensor"),
    ("colors-rank", lambda: ops.ray_march(P(5), P(5), P(5)), ValueError, r"colors must be \[\.\.\., S, C\], got \[5\]"),
    ("densities-shape", lambda: ops.ray_march(P(4, 5, 2), P(4, 6), P(4, 6)), ValueError,
     r"densities must be \[\.\.\., S\] = \[4, 5\].*got \[4, 6\]"),
    ("densities-lead", lambda: ops.ray_march(P(4, 5, 2), P(3, 5), P(3, 5)), ValueError,
     r"densities must be .*got \[3, 5\]"),
    ("densities-rank", lambda: ops.ray_march(P(2, 4, 5, 2), P(4, 5), P(4, 5)), ValueError,
     r"densities must be .*got \[4, 5\]"),
    ("depths-shape", lambda: ops.ray_march(P(4, 5, 2), P(4, 5), P(4, 4)), ValueError,
     r"depths must have the shape of densities \[4, 5\], got \[4, 4\]"),
    ("S<2", lambda: ops.ray_march(P(4, 1, 2), P(4, 1), P(4, 1)), ValueError, r"S >= 2.*got S = 1"),
    ("S=0", lambda: ops.ray_march(P(4, 0, 2), P(4, 0), P(4, 0)), ValueError, r"S >= 2.*got S = 0"),
    ("densities-dtype", lambda: ops.ray_march(P(4, 5, 2), P(4, 5, dtype=f64), P(4, 5)), TypeError,
     r"densities must have the dtype of colors \(torch\.float32\), got torch\.float64"),
    ("depths-dtype", lambda: ops.ray_march(P(4, 5, 2), P(4, 5), P(4, 5, dtype=f64)), TypeError,
     r"depths must have the dtype of colors"),
    ("colors-int", lambda: ops.ray_march(P(4, 5, 2, dtype=torch.int64), P(4, 5), P(4, 5)), TypeError,
     r"colors must be a floating-point tensor, got torch\.int64"),
    ("densities-int", lambda: ops.ray_march(P(4, 5, 2), P(4, 5, dtype=torch.int32), P(4, 5)), TypeError,
     r"densities must be a floating-point tensor"),
    ("depths-bool", lambda: ops.ray_march(P(4, 5, 2), P(4, 5), P(4, 5, dtype=torch.bool)), TypeError,
     r"depths must be a floating-point tensor"),
    ("densities-device", lambda: ops.ray_march(P(4, 5, 2), P(4, 5, device="meta"), P(4, 5)), ValueError,
     r"densities must be on the device of colors \(cpu\), got meta"),
    ("depths-device", lambda: ops.ray_march(P(4, 5, 2), P(4, 5), P(4, 5, device="meta")), ValueError,
     r"depths must be on the device of colors"),
    ("backend", lambda: ops.ray_march(P(4, 5, 2), P(4, 5), P(4, 5), backend="fast"), ValueError,
     r"backend must be one of .*got 'fast'"),
]

RASTER = [
    ("points-not-tensor", lambda: ops.rasterize_points(None, P(1, 6, 2), 4), TypeError, r"points must be a torch\.Tensor"),
    ("points-rank", lambda: ops.rasterize_points(P(6, 3), P(1, 6, 2), 4), ValueError,
     r"points must be \[B, N, 3\], got \[6, 3\]"),
    ("points-trailing", lambda: ops.rasterize_points(P(1, 6, 2), P(1, 6, 2), 4), ValueError,
     r"points must be \[B, N, 3\], got \[1, 6, 2\]"),
    ("features-rank", lambda: ops.rasterize_points(P(1, 6, 3), P(6, 2), 4), ValueError,
     r"features must be \[B, N, C\], got \[6, 2\]"),
    ("features-batch", lambda: ops.rasterize_points(P(1, 6, 3), P(2, 6, 2), 4), ValueError,
     r"features must have the batch size of points \(1\), got 2"),
    ("features-N", lambda: ops.rasterize_points(P(1, 6, 3), P(1, 5, 2), 4), ValueError,
     r"features must be \[B, N, C\] with the N of points \(6\), got \[1, 5, 2\]"),
    ("features-dtype", lambda: ops.rasterize_points(P(1, 6, 3), P(1, 6, 2, dtype=f64), 4), TypeError,
     r"points must have the dtype of features \(torch\.float64\), got torch\.float32"),
    ("points-int", lambda: ops.rasterize_points(P(1, 6, 3, dtype=torch.int64), P(1, 6, 2), 4), TypeError,
     r"points must be a floating-point tensor"),
    ("features-int", lambda: ops.rasterize_points(P(1, 6, 3), P(1, 6, 2, dtype=torch.int64), 4), TypeError,
     r"features must be a floating-point tensor"),
    ("features-device", lambda: ops.rasterize_points(P(1, 6, 3), P(1, 6, 2, device="meta"), 4), ValueError,
     r"points must be on the device of features \(meta\), got cpu"),
    ("resolution-0", lambda: ops.rasterize_points(P(1, 6, 3), P(1, 6, 2), 0), ValueError,
     r"resolution must be an int or an \(H, W\) pair of ints >= 1, got 0"),
    ("resolution-H0", lambda: ops.rasterize_points(P(1, 6, 3), P(1, 6, 2), (0, 4)), ValueError,
     r"resolution must be .*got \(0, 4\)"),
    ("resolution-W-neg", lambda: ops.rasterize_points(P(1, 6, 3), P(1, 6, 2), (4, -1)), ValueError,
     r"resolution must be .*got \(4, -1\)"),
    ("resolution-float", lambda: ops.rasterize_points(P(1, 6, 3), P(1, 6, 2), 2.5), TypeError,
     r"resolution must be .*got 2\.5"),
    ("resolution-float-pair", lambda: ops.rasterize_points(P(1, 6, 3), P(1, 6, 2), (4.0, 4)), TypeError,
     r"resolution must be .*got \(4\.0, 4\)"),
    ("resolution-one", lambda: ops.rasterize_points(P(1, 6, 3), P(1, 6, 2), (4,)), TypeError, r"resolution must be"),
    ("resolution-triple", lambda: ops.rasterize_points(P(1, 6, 3), P(1, 6, 2), (4, 4, 4)), TypeError,
     r"resolution must be"),
    ("resolution-bool", lambda: ops.rasterize_points(P(1, 6, 3), P(1, 6, 2), True), TypeError, r"resolution must be"),
    ("resolution-None", lambda: ops.rasterize_points(P(1, 6, 3), P(1, 6, 2), None), TypeError, r"resolution must be"),
    ("resolution-str", lambda: ops.rasterize_points(P(1, 6, 3), P(1, 6, 2), "4"), TypeError, r"resolution must be"),
    ("valid-float", lambda: ops.rasterize_points(P(1, 6, 3), P(1, 6, 2), 4, valid=P(1, 6)), TypeError,
     r"valid must be a bool tensor \[B, N\], got dtype torch\.float32"),
    ("valid-int", lambda: ops.rasterize_points(P(1, 6, 3), P(1, 6, 2), 4, valid=P(1, 6, dtype=torch.int64)),
     TypeError, r"valid must be a bool tensor"),
    ("valid-list", lambda: ops.rasterize_points(P(1, 6, 3), P(1, 6, 2), 4, valid=[[True] * 6]), TypeError,
     r"valid must be a bool tensor \[B, N\] or None, got list"),
    ("valid-shape", lambda: ops.rasterize_points(P(1, 6, 3), P(1, 6, 2), 4, valid=P(1, 5, dtype=torch.bool)),
     ValueError, r"valid must be \[B, N\] = \[1, 6\], got \[1, 5\]"),
    ("valid-rank", lambda: ops.rasterize_points(P(1, 6, 3), P(1, 6, 2), 4, valid=P(6, dtype=torch.bool)),
     ValueError, r"valid must be \[B, N\] = \[1, 6\], got \[6\]"),
    ("valid-device", lambda: ops.rasterize_points(P(1, 6, 3), P(1, 6, 2), 4,
                                                   valid=P(1, 6, dtype=torch.bool, device="meta")),
     ValueError, r"valid must be on the device of points \(cpu\), got meta"),
    ("max_distance-negative", lambda: ops.rasterize_points(P(1, 6, 3), P(1, 6, 2), 4, max_distance=-0.1), ValueError,
     r"max_distance must be >= 0, got -0\.1"),
    ("max_distance-nan", lambda: ops.rasterize_points(P(1, 6, 3), P(1, 6, 2), 4, max_distance=float("nan")),
     ValueError, r"max_distance must be >= 0, got nan"),
    ("max_distance-str", lambda: ops.rasterize_points(P(1, 6, 3), P(1, 6, 2), 4, max_distance="0.1"), TypeError,
     r"max_distance must be a number or None, got str"),
    ("max_distance-bool", lambda: ops.rasterize_points(P(1, 6, 3), P(1, 6, 2), 4, max_distance=True), TypeError,
     r"max_distance must be a number or None, got bool"),
    ("box_warp", lambda: ops.rasterize_points(P(1, 6, 3), P(1, 6, 2), 4, box_warp=-2.0), ValueError,
     r"box_warp must be a positive"),
    ("backend", lambda: ops.rasterize_points(P(1, 6, 3), P(1, 6, 2), 4, backend="NATIVE"), ValueError,
     r"backend must be one of .*got 'NATIVE'"),
]


def _params(table):
    return [pytest.param(fn, exc, pattern, id=name) for name, fn, exc, pattern in table]


@pytest.mark.parametrize("fn,exc,pattern", _params(TRIPLANE) + _params(RAY_MARCH) + _params(RASTER))
def test_bad_input(fn, exc, pattern):
    with pytest.raises(exc, match=pattern):
        fn()


@pytest.mark.parametrize("axes", BAD_AXES, ids=[repr(a) for a in BAD_AXES])
def test_bad_axes(axes):
    with pytest.raises(ValueError, match=r"axes must be three \(a, b\) pairs .*got " + re.escape(repr(axes))):
        ops.triplane_sample(P(1, 3, 2, 4, 4), P(1, 5, 3), axes=axes)
    with pytest.raises(ValueError, match=r"axes must be three \(a, b\) pairs"):
        ops.rasterize_points(P(1, 6, 3), P(1, 6, 2), 4, axes=axes)


def test_axes_accept_lists_and_any_valid_pairs():
    a = ops.triplane_sample(P(1, 3, 2, 4, 4), P(1, 5, 3), axes=[[0, 1], [0, 2], [2, 1]])
    b = ops.triplane_sample(P(1, 3, 2, 4, 4), P(1, 5, 3), axes=((1, 0), (2, 0), (1, 2)))
    assert a.shape == b.shape == (1, 5, 2)


CALLS = {
    "triplane_sample": lambda dt, **kw: ops.triplane_sample(P(1, 3, 2, 4, 4, dtype=dt), P(1, 5, 3, dtype=dt), **kw),
    "ray_march": lambda dt, **kw: ops.ray_march(P(4, 5, 2, dtype=dt), P(4, 5, dtype=dt), P(4, 5, dtype=dt), **kw),
    "rasterize_points": lambda dt, **kw: ops.rasterize_points(P(1, 6, 3, dtype=dt), P(1, 6, 2, dtype=dt), 4, **kw),
}


@pytest.mark.parametrize("op", list(CALLS))
def test_triton_backend_is_unavailable(op):
    with pytest.raises(RuntimeError, match=r"triton.*unavailable|unavailable.*triton"):
        CALLS[op](f32, backend="triton")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("op", list(CALLS))
def test_native_rejects_half_precision(op, dtype):
    name = str(dtype).replace("torch.", "")
    with pytest.raises(TypeError, match=rf"backend='native' supports float32, float64 on cpu for {op}, got torch\.{name}"):
        CALLS[op](dtype, backend="native")


@pytest.mark.parametrize("op", list(CALLS))
@pytest.mark.parametrize("backend", [None, "auto", "reference", "native"])
def test_good_backends_run(op, backend):
    out = CALLS[op](f64, backend=backend)
    assert out is not None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_mismatch_cuda():
    with pytest.raises(ValueError, match=r"points must be on the device of planes"):
        ops.triplane_sample(P(1, 3, 2, 4, 4, device="cuda"), P(1, 5, 3))
    with pytest.raises(ValueError, match=r"densities must be on the device of colors"):
        ops.ray_march(P(4, 5, 2, device="cuda"), P(4, 5), P(4, 5, device="cuda"))
    with pytest.raises(ValueError, match=r"points must be on the device of features"):
        ops.rasterize_points(P(1, 6, 3), P(1, 6, 2, device="cuda"), 4)
    with pytest.raises(ValueError, match=r"valid must be on the device of points"):
        ops.rasterize_points(P(1, 6, 3), P(1, 6, 2), 4, valid=P(1, 6, dtype=torch.bool, device="cuda"))


# The C++ entry points, called directly (they bypass the Python checks).
o = torch.ops.oneshot
G = [0, 1, 0, 2, 2, 1]
NATIVE = [
    ("tri-half", lambda: o.triplane_sample(P(1, 3, 2, 4, 4, dtype=torch.float16), P(1, 5, 3, dtype=torch.float16),
                                           1.0, G, "mean"), TypeError, r"planes must be float32 or float64"),
    ("tri-dtype", lambda: o.triplane_sample(P(1, 3, 2, 4, 4), P(1, 5, 3, dtype=f64), 1.0, G, "mean"), TypeError,
     r"points must have the dtype of planes"),
    ("tri-batch", lambda: o.triplane_sample(P(1, 3, 2, 4, 4), P(2, 5, 3), 1.0, G, "mean"), ValueError,
     r"points must have the batch size of planes"),
    ("tri-rank", lambda: o.triplane_sample(P(3, 2, 4, 4), P(1, 5, 3), 1.0, G, "mean"), ValueError,
     r"planes must be \[B, 3, C, H, W\]"),
    ("tri-reduce", lambda: o.triplane_sample(P(1, 3, 2, 4, 4), P(1, 5, 3), 1.0, G, "max"), ValueError, r"reduce"),
    ("tri-axes", lambda: o.triplane_sample(P(1, 3, 2, 4, 4), P(1, 5, 3), 1.0, [0, 1, 0, 2, 2], "mean"), ValueError,
     r"axes"),
    ("tri-axes-range", lambda: o.triplane_sample(P(1, 3, 2, 4, 4), P(1, 5, 3), 1.0, [0, 1, 0, 2, 2, 3], "mean"),
     ValueError, r"axes"),
    ("tri-axes-same", lambda: o.triplane_sample(P(1, 3, 2, 4, 4), P(1, 5, 3), 1.0, [0, 0, 0, 2, 2, 1], "mean"),
     ValueError, r"axes must pair two distinct coordinates"),
    ("ras-axes-same", lambda: o.rasterize_points(P(1, 6, 3), P(1, 6, 2), 4, 4, 1.0, [0, 1, 2, 2, 2, 1], None, None,
                                                 False), ValueError, r"axes must pair two distinct coordinates"),
    ("tri-bwd-grad", lambda: o.triplane_sample_backward(P(1, 4, 2), P(1, 3, 2, 4, 4), P(1, 5, 3), 1.0, G, "mean",
                                                         True, True), ValueError, r"grad_out must be"),
    ("rm-S", lambda: o.ray_march(P(4, 1, 2), P(4, 1), P(4, 1), -1.0, False), ValueError, r"S >= 2"),
    ("rm-shape", lambda: o.ray_march(P(4, 5, 2), P(4, 6), P(4, 6), -1.0, False), ValueError, r"densities must be"),
    ("rm-dtype", lambda: o.ray_march(P(4, 5, 2), P(4, 5, dtype=f64), P(4, 5), -1.0, False), TypeError,
     r"densities must have the dtype of colors"),
    ("rm-int", lambda: o.ray_march(P(4, 5, 2, dtype=torch.int32), P(4, 5, dtype=torch.int32),
                                   P(4, 5, dtype=torch.int32), -1.0, False), TypeError, r"colors must be float32"),
    ("ras-bwd-planes", lambda: o.rasterize_points_backward(P(1, 2, 2, 4, 4), torch.zeros(1, 3, 4, 4, dtype=torch.long),
                                                          6), ValueError, r"grad_planes must be \[B, 3, C, H, W\], got \[1, 2, 2, 4, 4\]"),
    ("ras-bwd-num-points", lambda: o.rasterize_points_backward(P(1, 3, 2, 4, 4), torch.zeros(1, 3, 4, 4, dtype=torch.long),
                                                              -1), ValueError, r"num_points must be >= 0, got -1"),
    ("rm-bwd-grad", lambda: o.ray_march_backward(P(4, 3), None, None, None, P(4, 5, 2), P(4, 5), P(4, 5), -1.0,
                                                 False), ValueError, r"grad_features must be"),
    ("ras-res", lambda: o.rasterize_points(P(1, 6, 3), P(1, 6, 2), 0, 4, 1.0, G, None, None, False), ValueError,
     r"resolution"),
    ("ras-box", lambda: o.rasterize_points(P(1, 6, 3), P(1, 6, 2), 4, 4, 0.0, G, None, None, False), ValueError,
     r"box_warp"),
    ("ras-maxd", lambda: o.rasterize_points(P(1, 6, 3), P(1, 6, 2), 4, 4, 1.0, G, None, -1.0, False), ValueError,
     r"max_distance"),
    ("ras-valid", lambda: o.rasterize_points(P(1, 6, 3), P(1, 6, 2), 4, 4, 1.0, G, P(1, 6), None, False), TypeError,
     r"valid must be a bool tensor"),
    ("ras-valid-shape", lambda: o.rasterize_points(P(1, 6, 3), P(1, 6, 2), 4, 4, 1.0, G, P(1, 5, dtype=torch.bool),
                                                   None, False), ValueError, r"valid must be \[B, N\]"),
    ("ras-N", lambda: o.rasterize_points(P(1, 6, 3), P(1, 5, 2), 4, 4, 1.0, G, None, None, False), ValueError,
     r"features must be \[B, N, C\]"),
    ("ras-bwd-index", lambda: o.rasterize_points_backward(P(1, 3, 2, 4, 4), P(1, 3, 4, 4), 6), TypeError,
     r"index must be int64"),
    ("ras-bwd-shape", lambda: o.rasterize_points_backward(P(1, 3, 2, 4, 4), P(1, 3, 4, 5, dtype=torch.int64), 6),
     ValueError, r"index must be \[B, 3, H, W\]"),
]


@pytest.mark.parametrize("fn,exc,pattern", _params(NATIVE))
def test_native_entry_points_check_inputs(fn, exc, pattern):
    with pytest.raises(exc, match=pattern):
        fn()
