"""triplane_sample: native C++ against the grid_sample reference (and an independent loop oracle), gradients,
opcheck and edge cases.

Tolerances. Unnormalising a coordinate, ix = ((x + 1) W - 1) / 2, puts an absolute error of about
max(H, W) eps on the bilinear fractions, and grid_sample rounds that expression differently from the kernels;
sums add a few eps per term. So every bound is K * (max(H, W) + terms) * eps * (the scale of the quantity),
K = 4 (eight times or more the largest error measured on hundreds of random cases in both dtypes). The gradient
w.r.t. points jumps where a coordinate crosses a pixel boundary, so it is compared only for points at least a
small margin (many ulp) away from every boundary; the others must merely be finite.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from conftest import AWKWARD_SIZES, DEVICES, FLOAT_DTYPES, assert_close, require_native, with_layout
from oneshot import ops
from oneshot.ops import PLANE_AXES_EG3D, PLANE_AXES_GOHA

K = 4.0
AXES_CUSTOM = ((1, 2), (2, 0), (1, 0))
ALL_AXES = [PLANE_AXES_GOHA, PLANE_AXES_EG3D, AXES_CUSTOM]
AXES_IDS = ["goha", "eg3d", "custom"]


class TriCase(NamedTuple):
    dtype: torch.dtype
    B: int
    C: int
    H: int
    W: int
    M: int
    box_warp: float
    axes: tuple
    reduce: str
    planes_layout: str  # contiguous, channels_last, transposed, strided, expanded
    points_layout: str  # contiguous, transposed, strided
    spread: float  # points are uniform in spread * the box
    seed: int


def planes_with_layout(planes: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "channels_last":  # [B, 3, H, W, C] storage: the kernels' own layout, read in place
        return planes.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    if layout == "expanded":  # batch 0 broadcast to every batch (stride 0), channels-last: read in place
        first = planes[:1].permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
        return first.expand(planes.shape[0], -1, -1, -1, -1)
    return with_layout(planes, layout)


def make_inputs(B, C, H, W, M, dtype, box_warp=1.0, spread=1.2, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    planes = torch.randn(B, 3, C, H, W, dtype=torch.float64, generator=g)
    points = (torch.rand(B, M, 3, dtype=torch.float64, generator=g) * 2 - 1) * (spread * box_warp / 2)
    return planes.to(device=device, dtype=dtype), points.to(device=device, dtype=dtype)


def pixel_margin(dtype, H, W) -> float:
    return 64 * (max(H, W) + 2) * torch.finfo(dtype).eps


def away_from_pixel_boundaries(points, box_warp, axes, H, W, margin) -> torch.Tensor:
    """[B, M] bool: every coordinate a point reads is `margin` pixels or more from an integer pixel position."""
    c = points.detach().double() * (2.0 / box_warp)
    ok = torch.ones(points.shape[:2], dtype=torch.bool, device=points.device)
    for a, b in axes:
        for coord, size in ((a, W), (b, H)):
            ix = ((c[..., coord] + 1) * size - 1) / 2
            frac = ix - ix.floor()
            ok &= (frac > margin) & (frac < 1 - margin)
    return ok


def run(planes, points, backend, cot=None, **kw):
    p = planes.detach().requires_grad_(True)
    x = points.detach().requires_grad_(True)
    out = ops.triplane_sample(p, x, backend=backend, **kw)
    if cot is None:
        return out, None
    return out, torch.autograd.grad(out, (p, x), cot)


def compare(planes, points, *, seed=0, box_warp=1.0, axes=PLANE_AXES_GOHA, reduce="mean"):
    """Native against reference, forward and backward with a random cotangent; returns the native results."""
    kw = dict(box_warp=box_warp, axes=axes, reduce=reduce)
    dtype = planes.dtype
    B, _, C, H, W = planes.shape
    M = points.shape[1]
    out_ref, _ = run(planes, points, "reference", **kw)
    cot = torch.randn(out_ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)).to(out_ref)
    out_ref, (gp_ref, gx_ref) = run(planes, points, "reference", cot, **kw)
    out_nat, (gp_nat, gx_nat) = run(planes, points, "native", cot, **kw)
    e = torch.finfo(dtype).eps
    size = max(H, W)
    pmax = planes.detach().abs().max().item() if planes.numel() else 0.0
    # Forward: 4 taps x 3 planes, each weight off by ~ size eps.
    assert_close(out_nat, out_ref, atol=K * (size + 8) * e * pmax * (3 if reduce == "sum" else 1), name="output")
    # Planes: every cell sums up to M contributions of |weight * cot|.
    p = planes.detach().requires_grad_(True)
    (mag,) = torch.autograd.grad(ops.triplane_sample(p, points.detach(), backend="reference", **kw), p, cot.abs())
    assert_close(gp_nat, gp_ref, atol=K * (size + M + 8) * e * mag.abs().max().item(), name="grad planes")
    # Points: (size / 2) (2 / box_warp) sum_p sum_k |dweight| |<cot, tap>|.
    row = cot.detach().abs().double().sum(-1)
    row = row.sum(1) if reduce == "none" else row * (1.0 if reduce == "mean" else 3.0)
    scale_x = size / 2 * (2 / box_warp) * pmax * (row.max().item() if row.numel() else 0.0)
    assert torch.isfinite(gx_nat).all()
    safe = away_from_pixel_boundaries(points, box_warp, axes, H, W, pixel_margin(dtype, H, W))
    assert safe.numel() < 16 or safe.sum() >= safe.numel() // 2, "too few points left to compare"
    assert_close(gx_nat[safe], gx_ref[safe], atol=K * (size + C + 8) * e * scale_x, name="grad points")
    return out_nat, gp_nat, gx_nat


# ----------------------------------------------------------------------------------------- native vs reference


@st.composite
def tri_cases(draw):
    return TriCase(
        dtype=draw(st.sampled_from(FLOAT_DTYPES)),
        B=draw(st.sampled_from([1, 2, 3])),
        C=draw(st.sampled_from([1, 2, 3, 5, 8, 9, 16, 17, 32, 33])),
        H=draw(st.sampled_from(AWKWARD_SIZES)),
        W=draw(st.sampled_from(AWKWARD_SIZES)),
        M=draw(st.sampled_from([1, 2, 3, 7, 16, 17, 31, 64, 127, 257])),
        box_warp=draw(st.sampled_from([1.0, 2.0, 0.5, 1.7, 3.0])),
        axes=draw(st.sampled_from(ALL_AXES)),
        reduce=draw(st.sampled_from(["mean", "sum", "none"])),
        planes_layout=draw(st.sampled_from(["contiguous", "channels_last", "transposed", "strided", "expanded"])),
        points_layout=draw(st.sampled_from(["contiguous", "transposed", "strided"])),
        spread=draw(st.sampled_from([0.5, 1.0, 1.2, 3.0])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@given(case=tri_cases())
@example(case=TriCase(torch.float32, 1, 1, 1, 1, 1, 1.0, PLANE_AXES_GOHA, "mean", "contiguous", "contiguous", 1.2, 0))
@example(case=TriCase(torch.float64, 2, 1, 1, 17, 5, 2.0, PLANE_AXES_EG3D, "none", "strided", "transposed", 1.0, 1))
@example(case=TriCase(torch.float32, 1, 33, 17, 1, 31, 0.5, AXES_CUSTOM, "sum", "channels_last", "strided", 1.2, 2))
@example(case=TriCase(torch.float32, 2, 32, 33, 31, 257, 1.7, PLANE_AXES_GOHA, "mean", "transposed", "contiguous",
                      3.0, 3))
@example(case=TriCase(torch.float64, 3, 8, 16, 16, 64, 1.0, PLANE_AXES_EG3D, "sum", "contiguous", "strided", 0.5, 4))
@example(case=TriCase(torch.float32, 3, 9, 7, 5, 31, 1.0, PLANE_AXES_GOHA, "none", "expanded", "contiguous", 1.2, 5))
def test_native_matches_reference(case: TriCase):
    planes, points = make_inputs(case.B, case.C, case.H, case.W, case.M, case.dtype, case.box_warp, case.spread,
                                 case.seed)
    planes = planes_with_layout(planes, case.planes_layout)
    points = with_layout(points, case.points_layout)
    out, gp, gx = compare(planes, points, seed=case.seed + 1, box_warp=case.box_warp, axes=case.axes,
                          reduce=case.reduce)
    shape = (case.B, 3, case.M, case.C) if case.reduce == "none" else (case.B, case.M, case.C)
    assert out.shape == shape and out.dtype == case.dtype
    assert gp.shape == planes.shape and gx.shape == points.shape


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("axes", ALL_AXES, ids=AXES_IDS)
@pytest.mark.parametrize("reduce", ["mean", "sum", "none"])
def test_axes_and_reduce(device, dtype, axes, reduce):
    require_native("triplane_sample", device)
    planes, points = make_inputs(2, 5, 9, 7, 40, dtype, box_warp=1.3, seed=5, device=device)
    compare(planes, points, seed=6, box_warp=1.3, axes=axes, reduce=reduce)


def _loop_oracle(planes, points, box_warp, axes):
    """The contract written out with Python loops in float64: grid_sample(bilinear, zeros, align_corners=False)
    of plane p at (c[axes[p][0]], c[axes[p][1]]), c = points * 2 / box_warp. Returns [B, 3, M, C]."""
    planes = planes.double()
    B, _, C, H, W = planes.shape
    M = points.shape[1]
    c = points.double() * (2.0 / box_warp)
    out = torch.zeros(B, 3, M, C, dtype=torch.float64)
    for b, p, m in itertools.product(range(B), range(3), range(M)):
        x, y = c[b, m, axes[p][0]].item(), c[b, m, axes[p][1]].item()
        ix, iy = ((x + 1) * W - 1) / 2, ((y + 1) * H - 1) / 2
        x0, y0 = int(torch.tensor(ix).floor()), int(torch.tensor(iy).floor())
        tx, ty = ix - x0, iy - y0
        for dx, dy in itertools.product((0, 1), (0, 1)):
            xx, yy = x0 + dx, y0 + dy
            if 0 <= xx < W and 0 <= yy < H:
                w = (tx if dx else 1 - tx) * (ty if dy else 1 - ty)
                out[b, p, m] += w * planes[b, p, :, yy, xx]
    return out


@pytest.mark.parametrize("axes", ALL_AXES, ids=AXES_IDS)
@pytest.mark.parametrize("box_warp", [1.0, 2.5])
@pytest.mark.parametrize("backend", ["native", "reference"])
def test_matches_independent_loop_oracle(axes, box_warp, backend):
    planes, points = make_inputs(2, 3, 4, 5, 13, torch.float64, box_warp=box_warp, spread=1.3, seed=7)
    expect = _loop_oracle(planes, points, box_warp, axes)
    got = ops.triplane_sample(planes, points, box_warp=box_warp, axes=axes, reduce="none", backend=backend)
    assert_close(got, expect, rtol=1e-12, atol=1e-12, name="none")
    got = ops.triplane_sample(planes, points, box_warp=box_warp, axes=axes, reduce="sum", backend=backend)
    assert_close(got, expect.sum(1), rtol=1e-12, atol=1e-12, name="sum")
    got = ops.triplane_sample(planes, points, box_warp=box_warp, axes=axes, backend=backend)
    assert_close(got, expect.mean(1), rtol=1e-12, atol=1e-12, name="mean")


def test_axes_conventions_differ_only_where_they_should():
    planes, points = make_inputs(1, 4, 8, 8, 50, torch.float64, seed=8)
    goha = ops.triplane_sample(planes, points, axes=PLANE_AXES_GOHA, reduce="none", backend="native")
    eg3d = ops.triplane_sample(planes, points, axes=PLANE_AXES_EG3D, reduce="none", backend="native")
    assert torch.equal(goha[:, :2], eg3d[:, :2])
    assert not torch.allclose(goha[:, 2], eg3d[:, 2])
    # EG3D's third plane reads (z, x): swapping x and y in the points turns GOHA's (z, y) into it.
    swapped = points[..., [1, 0, 2]]
    eg3d_via_goha = ops.triplane_sample(planes, swapped, axes=((1, 0), (1, 2), (2, 1)), reduce="none",
                                        backend="native")
    assert torch.equal(eg3d_via_goha[:, 2], eg3d[:, 2])


def test_auto_backend_is_native():
    planes, points = make_inputs(1, 3, 5, 5, 10, torch.float32, seed=9)
    a = ops.triplane_sample(planes, points)
    b = ops.triplane_sample(planes, points, backend="native")
    c = ops.triplane_sample(planes, points, backend="auto")
    assert torch.equal(a, b) and torch.equal(c, b)


@pytest.mark.parametrize("need", ["planes", "points"])
def test_only_one_input_requires_grad(need):
    planes, points = make_inputs(2, 3, 6, 5, 20, torch.float64, seed=10)
    results = []
    for backend in ("native", "reference"):
        p = planes.clone().requires_grad_(need == "planes")
        x = points.clone().requires_grad_(need == "points")
        out = ops.triplane_sample(p, x, reduce="sum", backend=backend)
        cot = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
        results.append(torch.autograd.grad(out, p if need == "planes" else x, cot)[0])
    safe = away_from_pixel_boundaries(points, 1.0, PLANE_AXES_GOHA, 6, 5, 1e-6)
    a, b = results
    if need == "points":
        a, b = a[safe], b[safe]
    assert_close(a, b, rtol=1e-10, atol=1e-10, name=f"grad {need}")


def test_reference_accepts_half_precision():
    planes, points = make_inputs(1, 2, 4, 4, 9, torch.float64, seed=11)
    expect = ops.triplane_sample(planes, points, backend="reference")
    for dt in (torch.float16, torch.bfloat16):
        got = ops.triplane_sample(planes.to(dt), points.to(dt))  # auto: the reference
        assert got.dtype == dt
        assert_close(got.double(), expect, atol=0.05 * expect.abs().max().item(), name=str(dt))


# ---------------------------------------------------------------------------------- gradcheck and opcheck


def _safe_tiny_inputs(B, C, H, W, M, box_warp, axes, seed):
    """float64 inputs whose points lie at least 0.01 pixel from every pixel boundary (gradcheck's finite
    differences must not cross one)."""
    for s in range(seed, seed + 1000):
        planes, points = make_inputs(B, C, H, W, M, torch.float64, box_warp, spread=1.1, seed=s)
        if away_from_pixel_boundaries(points, box_warp, axes, H, W, 0.01).all():
            return planes, points
    raise AssertionError("no safe inputs found")


@pytest.mark.parametrize(
    "B,C,H,W,M,box_warp,axes,reduce",
    [
        (1, 2, 3, 4, 5, 1.0, PLANE_AXES_GOHA, "mean"),
        (2, 1, 2, 3, 4, 1.7, PLANE_AXES_EG3D, "none"),
        (1, 3, 1, 5, 3, 0.8, AXES_CUSTOM, "sum"),
    ],
)
def test_gradcheck_native(B, C, H, W, M, box_warp, axes, reduce):
    planes, points = _safe_tiny_inputs(B, C, H, W, M, box_warp, axes, seed=100)
    planes.requires_grad_(True)
    points.requires_grad_(True)

    def fn(p, x):
        return ops.triplane_sample(p, x, box_warp=box_warp, axes=axes, reduce=reduce, backend="native")

    assert torch.autograd.gradcheck(fn, (planes, points), eps=1e-6, atol=1e-8, rtol=1e-6)


FLAT_GOHA = [0, 1, 0, 2, 2, 1]


@pytest.mark.parametrize("reduce,axes", [("mean", FLAT_GOHA), ("none", [0, 1, 0, 2, 2, 0]), ("sum", [1, 2, 2, 0, 1, 0])])
def test_opcheck_forward(reduce, axes):
    planes, points = make_inputs(2, 3, 4, 5, 6, torch.float64, seed=12)
    args = (planes.requires_grad_(True), points.requires_grad_(True), 1.3, axes, reduce)
    torch.library.opcheck(torch.ops.oneshot.triplane_sample.default, args)


@pytest.mark.parametrize("reduce", ["mean", "none"])
@pytest.mark.parametrize("need", [(True, True), (True, False), (False, True)], ids=["both", "planes", "points"])
def test_opcheck_backward(reduce, need):
    planes, points = make_inputs(2, 3, 4, 5, 6, torch.float64, seed=13)
    shape = (2, 3, 6, 3) if reduce == "none" else (2, 6, 3)
    grad = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    args = (grad, planes, points, 1.3, FLAT_GOHA, reduce, *need)
    torch.library.opcheck(torch.ops.oneshot.triplane_sample_backward.default, args)
    gp, gx = torch.ops.oneshot.triplane_sample_backward(*args)
    assert gp.shape == (planes.shape if need[0] else (0,))
    assert gx.shape == (points.shape if need[1] else (0,))


# ------------------------------------------------------------------------------------------------ edge cases


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("distance", [1.0, 1e30], ids=["near", "huge"])
def test_points_outside_the_box_contribute_nothing(dtype, backend, distance):
    B, C, H, W, M, bw = 2, 3, 5, 4, 12, 1.6
    planes, _ = make_inputs(B, C, H, W, M, dtype, seed=14)
    g = torch.Generator().manual_seed(1)
    # Beyond the outermost taps: |c| > 1 + 1/size on every coordinate -> all-zero rows and gradients.
    far = (1.0 + 2.0 / min(H, W) + torch.rand(B, M, 3, dtype=torch.float64, generator=g) * distance) * (bw / 2)
    sign = torch.where(torch.rand(B, M, 3, generator=g) < 0.5, -1.0, 1.0).double()
    points = (far * sign).to(dtype)
    p, x = planes.clone().requires_grad_(), points.clone().requires_grad_()
    out = ops.triplane_sample(p, x, box_warp=bw, reduce="none", backend=backend)
    assert torch.equal(out, torch.zeros_like(out))
    gp, gx = torch.autograd.grad(out, (p, x), torch.randn_like(out))
    assert torch.equal(gp, torch.zeros_like(gp)) and torch.equal(gx, torch.zeros_like(gx))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_points_on_the_border_and_mixed(dtype):
    """Points just inside/outside the box edge, where only some taps are inside the plane."""
    B, C, H, W, M = 1, 2, 4, 6, 60
    planes, points = make_inputs(B, C, H, W, M, dtype, spread=1.0, seed=15)
    g = torch.Generator().manual_seed(2)
    edge = (1.0 + (torch.rand(B, M, dtype=torch.float64, generator=g) - 0.5) * (2.0 / max(H, W))).to(dtype)
    points[:, :, 0] = edge * 0.5  # x around the box face (box_warp = 1): partially inside plane 0 and 1
    points[:, ::2, 2] = -edge[:, ::2] * 0.5
    compare(planes, points, seed=3, reduce="none")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("C,H,W", [(1, 6, 5), (4, 1, 7), (4, 7, 1), (1, 1, 1), (3, 2, 2)])
def test_small_planes(dtype, C, H, W):
    planes, points = make_inputs(2, C, H, W, 33, dtype, spread=1.3, seed=16 + H * W + C)
    for reduce in ("mean", "none"):
        compare(planes, points, seed=4, reduce=reduce)


def test_points_at_pixel_centres_read_the_pixels():
    """A point on a pixel centre reads that pixel exactly (with weight 1)."""
    B, C, H, W = 1, 3, 4, 6
    planes, _ = make_inputs(B, C, H, W, 1, torch.float64, seed=17)
    i, j = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    u = (2 * j.flatten().double() + 1) / W - 1
    v = (2 * i.flatten().double() + 1) / H - 1
    # GOHA plane 0 reads (x, y): x = u, y = v; z anywhere.
    points = torch.stack([u, v, torch.zeros_like(u)], -1)[None] / 2
    out = ops.triplane_sample(planes, points, reduce="none", backend="native")
    assert_close(out[0, 0], planes[0, 0].reshape(C, H * W).T, rtol=0, atol=1e-15, name="plane 0 at centres")


def test_reduce_relations():
    planes, points = make_inputs(2, 4, 9, 9, 30, torch.float64, seed=18)
    none = ops.triplane_sample(planes, points, reduce="none", backend="native")
    s = ops.triplane_sample(planes, points, reduce="sum", backend="native")
    m = ops.triplane_sample(planes, points, reduce="mean", backend="native")
    assert_close(s, none.sum(1), rtol=1e-13, atol=1e-13, name="sum")
    assert_close(m, none.sum(1) / 3, rtol=1e-13, atol=1e-13, name="mean")


def test_box_warp_scales_the_points():
    planes, points = make_inputs(1, 3, 8, 8, 40, torch.float64, box_warp=1.0, seed=19)
    a = ops.triplane_sample(planes, points, box_warp=1.0, backend="native")
    b = ops.triplane_sample(planes, points * 2.5, box_warp=2.5, backend="native")
    assert_close(b, a, rtol=1e-12, atol=1e-12, name="box_warp")


@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("reduce", ["mean", "none"])
@pytest.mark.parametrize("B,C,M", [(0, 2, 4), (2, 0, 4), (2, 2, 0), (0, 0, 0)])
def test_empty_inputs(backend, reduce, B, C, M):
    planes, points = make_inputs(B, C, 3, 3, M, torch.float32, seed=0)
    p, x = planes.requires_grad_(), points.requires_grad_()
    out = ops.triplane_sample(p, x, reduce=reduce, backend=backend)
    assert out.shape == ((B, 3, M, C) if reduce == "none" else (B, M, C))
    gp, gx = torch.autograd.grad(out, (p, x), torch.ones_like(out))
    assert gp.shape == p.shape and gx.shape == x.shape
    assert torch.equal(gp, torch.zeros_like(gp)) and torch.equal(gx, torch.zeros_like(gx))
