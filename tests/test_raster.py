"""rasterize_points: exact nearest-point splatting. The native index must EQUAL the reference's and an
independent numpy brute force (pinned float arithmetic: c = points * fl(2 / box_warp), cell centres in the
input dtype, d2 = fl(fl(du * du) + fl(dv * dv)), smallest d2 wins, equal d2 go to the lowest point index).

The planes are a gather, so they are compared exactly too. The gradient w.r.t. features is a scatter-add whose
summation order may differ between implementations: each element is compared with a float64 scatter-add,
within K * count * eps * (sum of |cotangent| over the cells it collects).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
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
RASTER_SIZES = AWKWARD_SIZES + [63, 65]


def brute_force_numpy(points, resolution, box_warp=1.0, axes=PLANE_AXES_GOHA, valid=None, max_distance=None,
                      align_corners=False):
    """Index [B, 3, H, W] by exhaustive search in numpy, each operation rounded in the dtype of points."""
    H, W = (resolution, resolution) if isinstance(resolution, int) else resolution
    pts = points.detach().cpu().numpy()
    dt = pts.dtype.type
    B, N, _ = pts.shape
    c = pts * dt(2.0 / box_warp)

    def centres(n):
        j = np.arange(n).astype(dt)
        if align_corners:
            return np.zeros(1, dt) if n == 1 else (j * dt(2)) / dt(n - 1) - dt(1)
        return (j * dt(2) + dt(1)) / dt(n) - dt(1)

    u, v = centres(W), centres(H)
    max_d2 = None if max_distance is None else dt(max_distance * max_distance)
    index = np.full((B, 3, H, W), -1, dtype=np.int64)
    if N == 0:
        return torch.from_numpy(index)
    ok = np.ones((B, N), bool) if valid is None else valid.cpu().numpy()
    with np.errstate(over="ignore", invalid="ignore"):
        for b in range(B):
            for p, (ia, ib) in enumerate(axes):
                du = u[:, None] - c[b, None, :, ia]  # [W, N]
                dv = v[:, None] - c[b, None, :, ib]  # [H, N]
                du2 = du * du
                dv2 = dv * dv
                d2 = dv2[:, None, :] + du2[None, :, :]  # [H, W, N]
                d2 = np.where(ok[b][None, None, :], d2, dt(np.inf))
                arg = np.argmin(d2, axis=-1)  # the first minimum: the lowest index
                best = np.take_along_axis(d2, arg[..., None], -1)[..., 0]
                empty = ~(best < dt(np.inf))
                if max_d2 is not None:
                    empty |= ~(best <= max_d2)
                index[b, p] = np.where(empty, -1, arg)
    return torch.from_numpy(index)


def scatter_expectation(index, cot, N):
    """float64 d(sum(planes * cot))/d(features) [B, N, C], and per element count * sum|cot| (the error scale)."""
    B, _, C, H, W = cot.shape
    idx = index.cpu().reshape(B, 3 * H * W)
    g = cot.detach().cpu().double().permute(0, 1, 3, 4, 2).reshape(B, 3 * H * W, C)
    out = torch.zeros(B, N + 1, C, dtype=torch.float64)
    mag = torch.zeros(B, N + 1, C, dtype=torch.float64)
    cnt = torch.zeros(B, N + 1, 1, dtype=torch.float64)
    slot = torch.where(idx < 0, torch.full_like(idx, N), idx)
    for b in range(B):
        out[b].index_add_(0, slot[b], g[b])
        mag[b].index_add_(0, slot[b], g[b].abs())
        cnt[b].index_add_(0, slot[b], torch.ones(3 * H * W, 1, dtype=torch.float64))
    return out[:, :N], (cnt * mag)[:, :N]


def run(points, features, resolution, backend, cot=None, **kw):
    f = features.detach().requires_grad_(True)
    planes, index = ops.rasterize_points(points, f, resolution, backend=backend, **kw)
    if cot is None:
        return planes, index, None
    return planes, index, torch.autograd.grad(planes, f, cot)[0]


def check_all(points, features, resolution, *, seed=0, numpy_too=True, **kw):
    """Native == reference (== numpy brute force) exactly; planes gathered exactly; gradients by scatter-add."""
    H, W = (resolution, resolution) if isinstance(resolution, int) else resolution
    B, N, C = features.shape
    cot = torch.randn(B, 3, C, H, W, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    cot = cot.to(features)
    pl_ref, ix_ref, g_ref = run(points, features, resolution, "reference", cot, **kw)
    pl_nat, ix_nat, g_nat = run(points, features, resolution, "native", cot, **kw)
    assert ix_nat.dtype == torch.int64 and ix_nat.shape == (B, 3, H, W)
    assert pl_nat.shape == (B, 3, C, H, W) and pl_nat.dtype == features.dtype
    if not torch.equal(ix_nat, ix_ref):
        bad = torch.nonzero(ix_nat != ix_ref)
        first = tuple(bad[0].tolist())
        raise AssertionError(f"index differs from the reference at {len(bad)} cells, e.g. {list(first)}: native "
                             f"{ix_nat[first].item()}, reference {ix_ref[first].item()}")
    if numpy_too:
        ix_np = brute_force_numpy(points, (H, W), valid=kw.get("valid"), box_warp=kw.get("box_warp", 1.0),
                                  axes=kw.get("axes", PLANE_AXES_GOHA), max_distance=kw.get("max_distance"),
                                  align_corners=kw.get("align_corners", False))
        if not torch.equal(ix_nat, ix_np):
            bad = torch.nonzero(ix_nat != ix_np)
            first = tuple(bad[0].tolist())
            raise AssertionError(f"index differs from the numpy brute force at {len(bad)} cells, e.g. {list(first)}: "
                                 f"native {ix_nat[first].item()}, numpy {ix_np[first].item()}")
    assert torch.equal(pl_nat, pl_ref), "planes differ from the reference"
    # The planes are the chosen features, 0 where empty.
    f = torch.cat([features.detach(), features.new_zeros(B, 1, C)], 1)
    sel = torch.where(ix_nat < 0, torch.full_like(ix_nat, N), ix_nat)
    expect = torch.stack([f[b][sel[b]] for b in range(B)]) if B else torch.zeros(0, 3, H, W, C, dtype=f.dtype)
    assert torch.equal(pl_nat, expect.permute(0, 1, 4, 2, 3)), "planes are not the gathered features"
    g_exp, mag = scatter_expectation(ix_nat, cot, N)
    e = torch.finfo(features.dtype).eps
    assert_close(g_nat.double(), g_exp, atol=K * e * mag, name="grad features (native)")
    assert_close(g_ref.double(), g_exp, atol=K * e * mag, name="grad features (reference)")
    return pl_nat, ix_nat, g_nat


# ------------------------------------------------------------------------------------------- random cases


class RasterCase(NamedTuple):
    dtype: torch.dtype
    B: int
    N: int
    C: int
    H: int
    W: int
    kind: str  # uniform, outside, clustered, duplicated, grid, lattice, ulp_cloud, tiny_cluster, extreme
    valid: str  # none, random, all_false, all_true
    max_distance: float | None
    align_corners: bool
    box_warp: float
    axes: tuple
    layout: str
    seed: int


def make_points(kind, B, N, H, W, dtype, box_warp, align_corners, seed):
    g = torch.Generator().manual_seed(seed)
    half = box_warp / 2
    if kind == "uniform":
        pts = (torch.rand(B, N, 3, dtype=torch.float64, generator=g) * 2 - 1) * half
    elif kind == "outside":
        pts = (torch.rand(B, N, 3, dtype=torch.float64, generator=g) * 2 - 1) * half * 3
    elif kind == "clustered":
        k = max(1, N // 8)
        centres = (torch.rand(B, k, 3, dtype=torch.float64, generator=g) * 2 - 1) * half
        pick = torch.randint(k, (B, N), generator=g)
        pts = torch.gather(centres, 1, pick[..., None].expand(B, N, 3))
        pts = pts + torch.randn(B, N, 3, dtype=torch.float64, generator=g) * half * 0.02
    elif kind == "duplicated":
        k = max(1, N // 3)
        base = (torch.rand(B, k, 3, dtype=torch.float64, generator=g) * 2 - 1) * half
        pick = torch.randint(k, (B, N), generator=g)
        pts = torch.gather(base, 1, pick[..., None].expand(B, N, 3))
    elif kind == "grid":  # on cell centres (as near as the dtype allows): ties along every axis
        def centre(n, j):
            if align_corners:
                return torch.zeros_like(j, dtype=torch.float64) if n == 1 else -1 + 2 * j.double() / (n - 1)
            return (2 * j.double() + 1) / n - 1

        n = max(H, W)
        j = torch.randint(n, (B, N, 3), generator=g)
        pts = centre(n, j) * half
    elif kind == "lattice":  # multiples of 1/8 of the box: exactly representable, exactly symmetric distances
        pts = torch.randint(-9, 10, (B, N, 3), generator=g).double() / 8 * half
    elif kind == "ulp_cloud":  # a point and neighbours a few float32 ulps away: near-ties everywhere
        base = (torch.rand(B, 1, 3, dtype=torch.float64, generator=g) * 2 - 1) * half
        steps = torch.randint(-3, 4, (B, N, 3), generator=g).double()
        pts = base + steps * 2.0**-24 * half
    elif kind == "tiny_cluster":  # everything within 1e-6 of one spot, cells far away from it
        base = (torch.rand(B, 1, 3, dtype=torch.float64, generator=g) * 2 - 1) * half * 1.5
        pts = base + torch.randn(B, N, 3, dtype=torch.float64, generator=g) * 1e-6
    elif kind == "extreme":  # magnitudes whose squares overflow (float32) or underflow, mixed with ordinary ones
        scale = torch.tensor([1e-40, 1e-20, 1.0, 1e15, 1e20, 1e30], dtype=torch.float64)
        pick = torch.randint(len(scale), (B, N, 1), generator=g)
        pts = (torch.rand(B, N, 3, dtype=torch.float64, generator=g) * 2 - 1) * scale[pick] * half
    else:
        raise ValueError(kind)
    return pts.to(dtype)


@st.composite
def raster_cases(draw):
    kind = draw(st.sampled_from(["uniform", "outside", "clustered", "duplicated", "grid", "lattice", "ulp_cloud",
                                 "tiny_cluster", "extreme"]))
    return RasterCase(
        dtype=draw(st.sampled_from(FLOAT_DTYPES)),
        B=draw(st.sampled_from([1, 2])),
        N=draw(st.sampled_from([1, 2, 3, 5, 7, 16, 17, 31, 33, 64, 100])),
        C=draw(st.sampled_from([1, 2, 3, 5])),
        H=draw(st.sampled_from(RASTER_SIZES)),
        W=draw(st.sampled_from(RASTER_SIZES)),
        kind=kind,
        valid=draw(st.sampled_from(["none", "random", "all_false", "all_true"])),
        max_distance=draw(st.sampled_from([None, None, 0.0, 0.05, 0.3, 2.0])),
        align_corners=draw(st.booleans()),
        box_warp=draw(st.sampled_from([1.0, 2.0, 0.7, 1.3] if kind != "lattice" else [1.0, 2.0, 4.0])),
        axes=draw(st.sampled_from(ALL_AXES)),
        layout=draw(st.sampled_from(["contiguous", "transposed", "strided"])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def _valid_mask(mode, B, N, seed):
    if mode == "none":
        return None
    if mode == "all_false":
        return torch.zeros(B, N, dtype=torch.bool)
    if mode == "all_true":
        return torch.ones(B, N, dtype=torch.bool)
    return torch.rand(B, N, generator=torch.Generator().manual_seed(seed)) < 0.6


@given(case=raster_cases())
@example(case=RasterCase(torch.float32, 1, 1, 1, 1, 1, "uniform", "none", None, False, 1.0, PLANE_AXES_GOHA,
                         "contiguous", 0))
@example(case=RasterCase(torch.float32, 2, 17, 3, 1, 9, "lattice", "random", None, True, 2.0, PLANE_AXES_EG3D,
                         "transposed", 1))
@example(case=RasterCase(torch.float64, 1, 33, 2, 8, 1, "grid", "none", 0.0, True, 1.0, AXES_CUSTOM, "strided", 2))
@example(case=RasterCase(torch.float32, 2, 100, 2, 65, 63, "clustered", "random", 0.3, False, 1.3, PLANE_AXES_GOHA,
                         "contiguous", 3))
@example(case=RasterCase(torch.float32, 1, 64, 1, 16, 16, "duplicated", "none", None, False, 1.0, PLANE_AXES_GOHA,
                         "contiguous", 4))
@example(case=RasterCase(torch.float32, 1, 31, 2, 17, 15, "grid", "random", 0.05, False, 2.0, PLANE_AXES_EG3D,
                         "transposed", 5))
@example(case=RasterCase(torch.float32, 1, 100, 1, 33, 31, "ulp_cloud", "none", None, False, 1.0, PLANE_AXES_GOHA,
                         "contiguous", 6))
@example(case=RasterCase(torch.float32, 2, 64, 1, 65, 65, "tiny_cluster", "random", 0.5, True, 1.0, AXES_CUSTOM,
                         "contiguous", 7))
@example(case=RasterCase(torch.float32, 1, 100, 2, 16, 17, "extreme", "none", None, False, 1.0, PLANE_AXES_GOHA,
                         "strided", 8))
@example(case=RasterCase(torch.float64, 1, 100, 2, 16, 17, "extreme", "random", 2.0, True, 2.0, PLANE_AXES_EG3D,
                         "contiguous", 9))
def test_native_matches_reference_exactly(case: RasterCase):
    pts = make_points(case.kind, case.B, case.N, case.H, case.W, case.dtype, case.box_warp, case.align_corners,
                      case.seed)
    feats = torch.randn(case.B, case.N, case.C, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(case.seed + 1)).to(case.dtype)
    valid = _valid_mask(case.valid, case.B, case.N, case.seed + 2)
    pts = with_layout(pts, case.layout)
    feats = with_layout(feats, case.layout)
    valid = None if valid is None else with_layout(valid, case.layout)
    _, index, _ = check_all(pts, feats, (case.H, case.W), seed=case.seed + 3, valid=valid,
                            max_distance=case.max_distance, align_corners=case.align_corners,
                            box_warp=case.box_warp, axes=case.axes)
    if valid is not None and not valid.any():
        assert (index == -1).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("align_corners", [False, True])
def test_lifted_depth_map_multi_tile(device, dtype, align_corners):
    """The real workload in small: a lifted depth map (a surface) onto planes of several 64x64 tiles, where most
    cells of the xz and zy planes are far from every point."""
    require_native("rasterize_points", device)
    g = torch.Generator().manual_seed(21)
    n = 24
    y, x = torch.meshgrid(torch.linspace(-0.4, 0.4, n, dtype=torch.float64),
                          torch.linspace(-0.4, 0.4, n, dtype=torch.float64), indexing="ij")
    z = 0.1 * torch.sin(3 * x) * torch.cos(2 * y) + 0.01 * torch.randn(n, n, dtype=torch.float64, generator=g)
    pts = torch.stack([x, y, z], -1).reshape(1, n * n, 3).to(dtype)
    feats = torch.randn(1, n * n, 2, dtype=torch.float64, generator=g).to(dtype)
    valid = torch.rand(1, n * n, generator=g) < 0.9
    for res, md in (((130, 129), None), (128, 0.05)):
        check_all(pts.to(device), feats.to(device), res, seed=1, numpy_too=False, valid=valid.to(device),
                  max_distance=md, align_corners=align_corners)


# ------------------------------------------------------------------------------------------- exact ties


def _cell_centre(n, j, align_corners):
    if align_corners:
        return 0.0 if n == 1 else -1 + 2 * j / (n - 1)
    return (2 * j + 1) / n - 1


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("order", [(0, 1, 2, 3), (3, 2, 1, 0), (2, 0, 3, 1), (1, 3, 0, 2)])
def test_equidistant_points_go_to_the_lowest_index(dtype, order):
    """Four points at (u +- d, v +- d) around one cell centre are exactly equidistant in any dtype (d = 1/8,
    box_warp = 2 so c = points exactly). Whatever order they come in, the lowest index wins."""
    H = W = 4
    i, j = 1, 2
    u, v = _cell_centre(W, j, False), _cell_centre(H, i, False)
    d = 0.125
    corners = [(u - d, v - d), (u + d, v - d), (u - d, v + d), (u + d, v + d)]
    pts = torch.tensor([[*corners[k], 0.9 - 0.1 * k] for k in order], dtype=dtype)[None]
    # A far decoy with a high index must never win.
    pts = torch.cat([pts, torch.tensor([[[-0.9, 0.9, -0.9]]], dtype=dtype)], 1)
    feats = torch.arange(5, dtype=dtype).reshape(1, 5, 1)
    _, index, _ = check_all(pts, feats, (H, W), box_warp=2.0)
    assert index[0, 0, i, j].item() == 0
    # And a symmetric pair about the centre along x only, given high-index-first.
    pair = torch.tensor([[[u + d, v, 0.0], [u - d, v, 0.0]]], dtype=dtype)
    _, index, _ = check_all(pair, torch.ones(1, 2, 1, dtype=dtype), (H, W), box_warp=2.0)
    assert index[0, 0, i, j].item() == 0


@pytest.mark.parametrize("align_corners", [False, True])
def test_tie_decided_by_pinned_rounding(align_corners):
    """Points A (index 0) and B (index 1) whose exact distances to a cell centre differ by 2^-28 while dv^2 =
    0.25: in float32 fl(2^-28 + 0.25) == 0.25, a tie that A (lowest index) wins; in float64 B is nearer."""
    H = W = 5 if align_corners else 4
    j, i = (3, 3) if align_corners else (2, 2)
    u, v = _cell_centre(W, j, align_corners), _cell_centre(H, i, align_corners)
    assert u == v == 0.5 if align_corners else u == v == 0.25
    tiny = 2.0**-14
    pts = [[u + tiny, v + 0.5, 0.0], [u, v + 0.5, 0.0]]
    for dtype, winner in ((torch.float32, 0), (torch.float64, 1)):
        p = torch.tensor([pts], dtype=dtype)
        assert p[0, 0, 0].item() == u + tiny  # exactly representable
        _, index, _ = check_all(p, torch.randn(1, 2, 2, dtype=dtype), (H, W), box_warp=2.0,
                                align_corners=align_corners)
        assert index[0, 0, i, j].item() == winner, f"{dtype}: cell ({i}, {j})"


# (x of A, x of B, y of both): float32 points around cell centre (0.25, 0.25) of a 4 x 4 plane (box_warp = 2).
# A is farther than B in exact arithmetic, and with a fused multiply-add fl(du * du + dv^2); but the pinned
# fl(fl(du * du) + fl(dv * dv)) ties them, so A (index 0) must win.
FMA_SENSITIVE = [
    (0.4272429347038269, 0.4272429049015045, 0.5034811496734619),
    (0.4609300494194031, 0.4609299898147583, 0.7356992959976196),
    (0.47632503509521484, 0.47632497549057007, 0.8359134197235107),
]


@pytest.mark.parametrize("xa,xb,y", FMA_SENSITIVE)
def test_tie_in_pinned_arithmetic_is_not_broken_by_fma_or_wider_math(xa, xb, y):
    from fractions import Fraction

    f = np.float32
    u = f(0.25)
    du_a, du_b, dv = u - f(xa), u - f(xb), u - f(y)
    assert f(xa) == xa and f(xb) == xb and f(y) == y
    pinned = [f(du * du) + f(dv * dv) for du in (du_a, du_b)]
    assert pinned[0] == pinned[1]  # a tie in the contract's arithmetic
    exact = [Fraction(float(du)) ** 2 + Fraction(float(dv)) ** 2 for du in (du_a, du_b)]
    assert exact[0] > exact[1]  # B is nearer in exact (and in double) arithmetic
    fused = [np.float32(float(Fraction(float(du)) ** 2 + Fraction(float(f(dv * dv))))) for du in (du_a, du_b)]
    assert fused[0] > fused[1]  # and with fma(du, du, dv^2)
    pts = torch.tensor([[[xa, y, 0.0], [xb, y, 0.0]]], dtype=torch.float32)
    _, index, _ = check_all(pts, torch.randn(1, 2, 1), (4, 4), box_warp=2.0)
    assert index[0, 0, 2, 2].item() == 0


def test_max_distance_squared_is_rounded_to_the_dtype():
    """max_distance^2 is computed in double and rounded to the dtype: 0.5 - 2^-54 gives exactly 0.25 in float32
    (the cell at d2 = 0.25 is kept) but stays below 0.25 in float64 (the cell is empty)."""
    md = 0.5 - 2.0**-54
    assert md < 0.5 and np.float32(md * md) == np.float32(0.25) and md * md < 0.25
    u = v = 0.25  # cell (2, 2) of a 4 x 4 plane
    for dtype, expect in ((torch.float32, 0), (torch.float64, -1)):
        p = torch.tensor([[[u, v + 0.5, 0.0]]], dtype=dtype)
        _, index, _ = check_all(p, torch.ones(1, 1, 1, dtype=dtype), 4, box_warp=2.0, max_distance=md)
        assert index[0, 0, 2, 2].item() == expect, str(dtype)
        _, index, _ = check_all(p, torch.ones(1, 1, 1, dtype=dtype), 4, box_warp=2.0, max_distance=0.5)
        assert index[0, 0, 2, 2].item() == 0, str(dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_duplicate_points_and_validity(dtype):
    B, N = 2, 7
    pts = torch.tensor([0.1, -0.2, 0.3], dtype=dtype).expand(B, N, 3).contiguous()
    feats = torch.randn(B, N, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).to(dtype)
    _, index, _ = check_all(pts, feats, (5, 6))
    assert (index == 0).all()
    valid = torch.ones(B, N, dtype=torch.bool)
    valid[0, :3] = False
    valid[1, 0] = False
    valid[1, 2] = False
    _, index, _ = check_all(pts, feats, (5, 6), valid=valid)
    assert (index[0] == 3).all() and (index[1] == 1).all()


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("res", [(1, 7), (6, 1), (1, 1)])
def test_single_row_or_column(dtype, align_corners, res):
    pts = make_points("uniform", 2, 19, 8, 8, dtype, 1.0, align_corners, seed=30)
    pts[0, 3] = pts[0, 11]  # a duplicate
    feats = torch.randn(2, 19, 2, dtype=dtype)
    check_all(pts, feats, res, align_corners=align_corners)
    check_all(pts, feats, res, align_corners=align_corners, max_distance=0.4)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_all_points_invalid(dtype):
    pts = make_points("uniform", 2, 9, 4, 4, dtype, 1.0, False, seed=31)
    feats = torch.randn(2, 9, 3, dtype=dtype)
    planes, index, grad = check_all(pts, feats, (4, 5), valid=torch.zeros(2, 9, dtype=torch.bool))
    assert (index == -1).all()
    assert torch.equal(planes, torch.zeros_like(planes))
    assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_max_distance_zero_keeps_only_exact_hits(dtype):
    """align_corners=True, 5 x 5: centres at -1, -0.5, 0, 0.5, 1; box_warp = 2 maps points onto them exactly."""
    pts = torch.tensor([[[0.5, -1.0, 0.0], [0.25, 0.0, 1.0], [1.0, 1.0, -0.5]]], dtype=dtype)
    feats = torch.randn(1, 3, 2, dtype=dtype)
    _, index, _ = check_all(pts, feats, 5, box_warp=2.0, align_corners=True, max_distance=0.0)
    # Plane 0 (x, y): point 0 at (0.5, -1) -> cell (0, 3); point 2 at (1, 1) -> cell (4, 4); point 1 misses.
    expect = torch.full((5, 5), -1)
    expect[0, 3] = 0
    expect[4, 4] = 2
    assert torch.equal(index[0, 0], expect)
    # Plane 1 (x, z): (0.5, 0) -> (2, 3); (0.25, 1) misses; (1, -0.5) -> (1, 4).
    expect = torch.full((5, 5), -1)
    expect[2, 3] = 0
    expect[1, 4] = 2
    assert torch.equal(index[0, 1], expect)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("max_distance", [None, 1e-3, 0.2, 1.0, 100.0])
def test_max_distance(dtype, max_distance):
    pts = make_points("clustered", 2, 40, 16, 16, dtype, 1.0, False, seed=32)
    check_all(pts, torch.randn(2, 40, 2, dtype=dtype), (16, 15), max_distance=max_distance)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_points_outside_the_box(dtype):
    far = torch.tensor([[[5.0, 5.0, 5.0]]], dtype=dtype)
    _, index, _ = check_all(far, torch.ones(1, 1, 2, dtype=dtype), (6, 7))
    assert (index == 0).all()  # the nearest valid point, however far
    _, index, _ = check_all(far, torch.ones(1, 1, 2, dtype=dtype), (6, 7), max_distance=1.0)
    assert (index == -1).all()
    mixed = make_points("outside", 2, 30, 8, 8, dtype, 1.0, False, seed=33)
    check_all(mixed, torch.randn(2, 30, 3, dtype=dtype), (8, 9))
    check_all(mixed, torch.randn(2, 30, 3, dtype=dtype), (8, 9), max_distance=0.5, align_corners=True)


def test_resolution_int_is_square():
    pts = make_points("uniform", 1, 10, 6, 6, torch.float32, 1.0, False, seed=34)
    feats = torch.randn(1, 10, 2)
    a = ops.rasterize_points(pts, feats, 6, backend="native")
    b = ops.rasterize_points(pts, feats, (6, 6), backend="native")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_auto_backend_is_native():
    pts = make_points("uniform", 1, 10, 6, 6, torch.float32, 1.0, False, seed=35)
    feats = torch.randn(1, 10, 2)
    a = ops.rasterize_points(pts, feats, (5, 7))
    b = ops.rasterize_points(pts, feats, (5, 7), backend="native")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_reference_accepts_half_precision():
    pts = make_points("lattice", 1, 12, 4, 4, torch.float64, 1.0, False, seed=36)
    feats = torch.randn(1, 12, 2, dtype=torch.float64)
    for dt in (torch.float16, torch.bfloat16):
        planes, index = ops.rasterize_points(pts.to(dt), feats.to(dt), (4, 4))  # auto: the reference
        assert planes.dtype == dt and index.dtype == torch.int64 and index.shape == (1, 3, 4, 4)
    # float16 holds every coordinate, squared distance and sum of this lattice exactly: same choice as float32.
    _, index = ops.rasterize_points(pts.half(), feats.half(), (4, 4))
    assert torch.equal(index, brute_force_numpy(pts.float(), (4, 4)))


# ---------------------------------------------------------------------------------- gradients, opcheck


@pytest.mark.parametrize("backend", ["native", "reference"])
def test_points_get_no_gradient(backend):
    pts = make_points("uniform", 1, 8, 4, 4, torch.float64, 1.0, False, seed=37).requires_grad_(True)
    feats = torch.randn(1, 8, 2, dtype=torch.float64, requires_grad=True)
    planes, _ = ops.rasterize_points(pts, feats, 4, backend=backend)
    gp, gf = torch.autograd.grad(planes.sum(), (pts, feats), allow_unused=True)
    assert gp is None or torch.equal(gp, torch.zeros_like(gp))
    assert gf is not None and gf.sum() > 0


@pytest.mark.parametrize("max_distance,valid", [(None, False), (0.3, True)])
def test_gradcheck_native(max_distance, valid):
    pts = make_points("clustered", 2, 6, 3, 4, torch.float64, 1.0, False, seed=38)
    feats = torch.randn(2, 6, 3, dtype=torch.float64, requires_grad=True)
    mask = (torch.arange(6) % 3 != 1).expand(2, 6).contiguous() if valid else None

    def fn(f):
        return ops.rasterize_points(pts, f, (3, 4), valid=mask, max_distance=max_distance, backend="native")[0]

    # The map is linear in the features (fast mode suffices; the full Jacobian is compared elementwise with an
    # explicit scatter-add in every check_all).
    assert torch.autograd.gradcheck(fn, (feats,), eps=1e-6, atol=1e-10, rtol=1e-8, fast_mode=True)


def _raster_op_args(valid, max_distance, align_corners):
    pts = make_points("uniform", 2, 9, 4, 5, torch.float64, 1.0, False, seed=39)
    feats = torch.randn(2, 9, 3, dtype=torch.float64, requires_grad=True)
    mask = (torch.arange(9) % 2 == 0).expand(2, 9).contiguous() if valid else None
    return (pts, feats, 4, 5, 1.0, [0, 1, 0, 2, 2, 1], mask, max_distance, align_corners)


@pytest.mark.parametrize("valid,max_distance,align_corners", [(False, None, False), (True, 0.3, True)])
def test_opcheck_forward(valid, max_distance, align_corners):
    torch.library.opcheck(torch.ops.oneshot.rasterize_points.default,
                          _raster_op_args(valid, max_distance, align_corners))


@pytest.mark.parametrize("valid,max_distance", [(False, None), (True, 0.2)])
def test_opcheck_backward(valid, max_distance):
    args = _raster_op_args(valid, max_distance, False)
    _, index = torch.ops.oneshot.rasterize_points(*args)
    grad = torch.randn(2, 3, 3, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.library.opcheck(torch.ops.oneshot.rasterize_points_backward.default, (grad, index, 9))
    got = torch.ops.oneshot.rasterize_points_backward(grad, index, 9)
    expect, mag = scatter_expectation(index, grad, 9)
    assert_close(got, expect, atol=K * torch.finfo(torch.float64).eps * mag, name="backward op")


# ------------------------------------------------------------------------------------------- empty inputs


@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("B,N,C", [(0, 3, 2), (2, 0, 2), (2, 3, 0), (0, 0, 0)])
def test_empty_inputs(backend, B, N, C):
    pts = make_points("uniform", B, N, 3, 4, torch.float32, 1.0, False, seed=0)
    feats = torch.randn(B, N, C, requires_grad=True)
    planes, index = ops.rasterize_points(pts, feats, (3, 4), backend=backend)
    assert planes.shape == (B, 3, C, 3, 4) and index.shape == (B, 3, 3, 4) and index.dtype == torch.int64
    if N == 0:
        assert (index == -1).all()
    if B and N and not C:
        assert torch.equal(index, brute_force_numpy(pts, (3, 4)))
    (g,) = torch.autograd.grad(planes, feats, torch.ones_like(planes))
    assert g.shape == feats.shape and g.dtype == feats.dtype
