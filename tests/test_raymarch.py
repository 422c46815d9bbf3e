"""ray_march: native C++ against the pure-PyTorch reference, gradients, opcheck and edge cases.

Tolerances. Both implementations evaluate the same formula; they may differ by a few ulp per transcendental
(exp, softplus) and in summation order. alpha = 1 - exp(-sigma delta) then carries an absolute error of a few
eps (so a tiny alpha has a large *relative* error), sums over the S - 1 intervals add S eps, and
depth = num / opacity amplifies absolute errors by 1 / opacity. `_tolerances` turns this into a per-ray bound
K * S * eps * (the scale of the quantity) with the 1 / opacity conditioning made explicit. K = 4 leaves a
margin of ten over the largest error measured on thousands of random rays in both dtypes.
"""

from __future__ import annotations

from typing import NamedTuple

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from conftest import DEVICES, FLOAT_DTYPES, LAYOUTS, assert_close, grads, require_native, with_layout
from oneshot import ops
from oneshot.ops import RayMarchResult

K = 4.0
OUTPUTS = RayMarchResult._fields  # features, depth, opacity, weights


class RayCase(NamedTuple):
    dtype: torch.dtype
    lead: tuple
    S: int
    C: int
    regime: str  # how densities are drawn
    repeats: bool  # some repeated depths (delta = 0)
    white: bool
    bias: float
    layout: str
    seed: int


def make_rays(lead, S, C, dtype, regime="moderate", repeats=False, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    colors = torch.randn(*lead, S, C, dtype=torch.float64, generator=g)
    shape = (*lead, S)
    if regime == "moderate":  # opacities of order 0.1 .. 1
        dens = torch.randn(shape, dtype=torch.float64, generator=g) * 2 + 1
    elif regime == "dense":  # mostly opaque after a few samples
        dens = torch.randn(shape, dtype=torch.float64, generator=g) * 5 + 12
    elif regime == "sparse":  # tiny opacities (ill-conditioned depth)
        dens = torch.randn(shape, dtype=torch.float64, generator=g) * 3 - 12
    elif regime == "wide":  # per-ray offsets from -30 to 30: empty, tiny, moderate and opaque rays together
        offset = torch.empty((*lead, 1), dtype=torch.float64).uniform_(-30, 30, generator=g)
        dens = torch.randn(shape, dtype=torch.float64, generator=g) * 8 + offset
    else:
        raise ValueError(regime)
    deltas = torch.rand(shape, dtype=torch.float64, generator=g) * 0.95 + 0.05
    if repeats:
        deltas = torch.where(torch.rand(shape, generator=g) < 0.25, torch.zeros_like(deltas), deltas)
    deltas[..., 0] = 0
    depths = torch.rand((*lead, 1), dtype=torch.float64, generator=g) * 3 + 0.5 + deltas.cumsum(-1)
    return tuple(t.to(device=device, dtype=dtype) for t in (colors, dens, depths))


def random_cotangents(out: RayMarchResult, seed: int):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(o.shape, dtype=torch.float64, generator=g).to(o) for o in out]


def run(colors, dens, depths, backend, cots=None, **kw):
    """Forward and the gradients w.r.t. colors and densities for the given cotangents (None: forward only)."""
    c = colors.detach().requires_grad_(True)  # a detached view keeps the layout (non-contiguous inputs)
    d = dens.detach().requires_grad_(True)
    out = ops.ray_march(c, d, depths, backend=backend, **kw)
    if cots is None:
        return out, None
    return out, grads(out, (c, d), cots)


def _tolerances(colors, depths, out_ref, out_nat, cots, dtype):
    """Per-element absolute tolerances for the four outputs and the two gradients (see the module docstring)."""
    f64 = lambda x: x.detach().to(torch.float64)  # noqa: E731
    S = depths.shape[-1]
    unit = K * S * torch.finfo(dtype).eps
    t = f64(depths)
    tmax = t.abs().amax(-1)
    span = t[..., -1] - t[..., 0]
    cmax = f64(colors).abs().amax((-1, -2)) if colors.shape[-1] else torch.zeros_like(tmax)
    op_r, op_n = f64(out_ref.opacity), f64(out_nat.opacity)
    both_empty = (op_r == 0) & (op_n == 0)  # both take the exact t_{S-1} branch, no depth gradient
    op = torch.minimum(op_r, op_n).clamp_min(1e-300)
    zero = torch.zeros_like(tmax)
    tol = {
        "weights": torch.full_like(f64(out_ref.weights), unit),
        "opacity": torch.full_like(op_r, unit),
        "features": (unit * (cmax + 1)).unsqueeze(-1).expand(out_ref.features.shape),
        "depth": torch.where(both_empty, zero, torch.minimum(unit * tmax / op, 2 * tmax + span)),
    }
    if cots is not None:
        gf, gd, go, gw = (f64(c) if c is not None else None for c in cots)
        gf = gf if gf is not None else torch.zeros(out_ref.features.shape, dtype=torch.float64, device=t.device)
        gd = gd if gd is not None else zero
        go = go if go is not None else zero
        gw = gw if gw is not None else torch.zeros(out_ref.weights.shape, dtype=torch.float64, device=t.device)
        dmax = (t[..., 1:] - t[..., :-1]).abs().amax(-1)
        g_depth = torch.where(both_empty, zero, gd.abs() * tmax / op)
        g_max = go.abs() + gw.abs().amax(-1) + gf.abs().sum(-1) * (cmax + 1) + g_depth
        gf_max = gf.abs().amax(-1) if gf.shape[-1] else zero
        tol["grad_colors"] = (unit * gf_max)[..., None, None].expand(colors.shape)
        tol["grad_densities"] = (unit * dmax * (g_max + g_depth / op))[..., None].expand(depths.shape)
    return tol


def compare(colors, dens, depths, *, cots="random", seed=0, **kw):
    """Native against reference: forward always, backward with the given cotangents ("random" on every output)."""
    out_ref, _ = run(colors, dens, depths, "reference", **kw)
    if cots == "random":
        cots = random_cotangents(out_ref, seed)
    out_ref, g_ref = run(colors, dens, depths, "reference", cots, **kw)
    out_nat, g_nat = run(colors, dens, depths, "native", cots, **kw)
    assert isinstance(out_nat, RayMarchResult)
    tol = _tolerances(colors, depths, out_ref, out_nat, cots, colors.dtype)
    for name in OUTPUTS:
        assert_close(getattr(out_nat, name), getattr(out_ref, name), atol=tol[name], name=name)
    if cots is not None:
        for name, a, b in zip(("grad_colors", "grad_densities"), g_nat, g_ref):
            assert a is not None and b is not None, name
            assert torch.isfinite(a).all() and torch.isfinite(b).all(), name
            assert_close(a, b, atol=tol[name], name=name)
    return out_nat, g_nat


# ----------------------------------------------------------------------------------------- native vs reference


@st.composite
def ray_cases(draw):
    return RayCase(
        dtype=draw(st.sampled_from(FLOAT_DTYPES)),
        lead=draw(st.sampled_from([(), (1,), (3,), (17,), (2, 3), (1, 1, 2), (2, 3, 5)])),
        S=draw(st.sampled_from([2, 3, 4, 5, 7, 8, 9, 16, 17, 31, 32, 33, 64, 65])),
        C=draw(st.sampled_from([1, 2, 3, 4, 7, 8, 9, 17, 32])),
        regime=draw(st.sampled_from(["moderate", "dense", "sparse", "wide"])),
        repeats=draw(st.booleans()),
        white=draw(st.booleans()),
        bias=draw(st.sampled_from([-1.0, 0.0, 0.5, -3.0])),
        layout=draw(st.sampled_from(LAYOUTS)),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@given(case=ray_cases())
@example(case=RayCase(torch.float32, (), 2, 1, "moderate", False, False, -1.0, "contiguous", 0))
@example(case=RayCase(torch.float64, (1,), 2, 1, "dense", True, True, -1.0, "transposed", 1))
@example(case=RayCase(torch.float32, (2, 3), 33, 3, "wide", True, False, -1.0, "strided", 2))
@example(case=RayCase(torch.float32, (5,), 96, 32, "moderate", False, True, -1.0, "contiguous", 3))
@example(case=RayCase(torch.float64, (3,), 17, 9, "sparse", True, False, 0.5, "transposed", 4))
def test_native_matches_reference(case: RayCase):
    colors, dens, depths = make_rays(case.lead, case.S, case.C, case.dtype, case.regime, case.repeats, case.seed)
    colors = with_layout(colors, case.layout)
    dens = with_layout(dens, case.layout)
    depths = with_layout(depths, case.layout)
    out, _ = compare(colors, dens, depths, seed=case.seed + 1, density_bias=case.bias, white_background=case.white)
    lead = case.lead
    assert out.features.shape == (*lead, case.C)
    assert out.depth.shape == lead and out.opacity.shape == lead
    assert out.weights.shape == (*lead, case.S - 1)
    assert all(o.dtype == case.dtype for o in out)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("lead", [(2, 3, 7), (), (1,), (4, 1)], ids=["2x3xR", "none", "one", "4x1"])
def test_leading_dims(device, dtype, lead):
    require_native("ray_march", device)
    colors, dens, depths = make_rays(lead, 9, 5, dtype, "wide", True, seed=len(lead), device=device)
    out, _ = compare(colors, dens, depths, seed=7)
    # The leading dims are a batch: the same rays flattened give the same results.
    flat, _ = run(colors.reshape(-1, 9, 5), dens.reshape(-1, 9), depths.reshape(-1, 9), "native")
    for name in OUTPUTS:
        a, b = getattr(out, name), getattr(flat, name)
        assert torch.equal(a.reshape(b.shape), b), name


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("which", OUTPUTS)
def test_gradient_through_one_output(dtype, which):
    """Only one output used: the native backward receives None for the other three."""
    colors, dens, depths = make_rays((6,), 11, 3, dtype, "wide", True, seed=11)
    out_ref, _ = run(colors, dens, depths, "reference")
    cots = [c if name == which else None for name, c in zip(OUTPUTS, random_cotangents(out_ref, 5))]
    _, g = compare(colors, dens, depths, cots=cots, white_background=(which == "features"))
    if which == "features":
        assert g[0].abs().sum() > 0
    else:
        assert torch.equal(g[0], torch.zeros_like(g[0]))  # colors only reach the features


@pytest.mark.parametrize("white", [False, True])
def test_only_one_input_requires_grad(white):
    colors, dens, depths = make_rays((4,), 6, 2, torch.float64, "moderate", seed=3)
    for req in ("colors", "densities"):
        c = colors.clone().requires_grad_(req == "colors")
        d = dens.clone().requires_grad_(req == "densities")
        out = ops.ray_march(c, d, depths, white_background=white, backend="native")
        loss = sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).reshape(o.shape)).sum() for o in out)
        (g,) = torch.autograd.grad(loss, c if req == "colors" else d)
        c2, d2 = colors.clone().requires_grad_(req == "colors"), dens.clone().requires_grad_(req == "densities")
        out2 = ops.ray_march(c2, d2, depths, white_background=white, backend="reference")
        loss2 = sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).reshape(o.shape)).sum() for o in out2)
        (g2,) = torch.autograd.grad(loss2, c2 if req == "colors" else d2)
        assert_close(g, g2, rtol=1e-10, atol=1e-12, name=f"grad {req}")


def test_auto_backend_is_native_and_matches_explicit():
    colors, dens, depths = make_rays((5,), 8, 3, torch.float32, seed=2)
    a = ops.ray_march(colors, dens, depths)
    b = ops.ray_march(colors, dens, depths, backend="native")
    c = ops.ray_march(colors, dens, depths, backend="auto")
    for name in OUTPUTS:
        assert torch.equal(getattr(a, name), getattr(b, name)) and torch.equal(getattr(c, name), getattr(b, name))


def test_reference_accepts_other_float_dtypes():
    colors, dens, depths = make_rays((3,), 5, 2, torch.float64, seed=4)
    exp = ops.ray_march(colors, dens, depths, backend="reference")
    for dt in (torch.float16, torch.bfloat16):
        got = ops.ray_march(colors.to(dt), dens.to(dt), depths.to(dt))  # auto falls back to the reference
        assert all(o.dtype == dt for o in got)
        assert_close(got.opacity.double(), exp.opacity, atol=0.05, name=f"opacity {dt}")


def _loop_oracle(colors, dens, depths, bias, white):
    """The contract's formulas, one ray at a time in Python floats (float64)."""
    import math

    R, S, C = colors.shape
    feats, depth, opac, weights = [], [], [], []
    for r in range(R):
        c, s, t = colors[r].tolist(), dens[r].tolist(), depths[r].tolist()
        trans, w = 1.0, []
        for i in range(S - 1):
            m = (s[i] + s[i + 1]) / 2 + bias
            sigma = m if m > 20 else math.log1p(math.exp(m))
            alpha = 1 - math.exp(-sigma * (t[i + 1] - t[i]))
            w.append(alpha * trans)
            trans *= 1 - alpha + 1e-10
        o = sum(w)
        f = [sum(w[i] * (c[i][k] + c[i + 1][k]) / 2 for i in range(S - 1)) + ((1 - o) if white else 0.0)
             for k in range(C)]
        d = sum(w[i] * (t[i] + t[i + 1]) / 2 for i in range(S - 1)) / o if o > 0 else t[-1]
        feats.append(f)
        depth.append(min(max(d, t[0]), t[-1]))
        opac.append(o)
        weights.append(w)
    as_t = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    return RayMarchResult(as_t(feats).reshape(R, C), as_t(depth), as_t(opac), as_t(weights))


@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("white,bias", [(False, -1.0), (True, 0.3)])
def test_matches_independent_loop_oracle(backend, white, bias):
    # Well-conditioned rays (depth = num / opacity amplifies rounding by 1 / opacity), plus the special cases.
    colors, dens, depths = make_rays((6,), 7, 2, torch.float64, "moderate", True, seed=20)
    dens[0, :3] = 25.0  # above softplus' threshold of 20
    dens[1] = -1e4  # empty ray: opacity 0, depth t_{S-1}
    dens[2] = 1e4  # opaque
    expect = _loop_oracle(colors, dens, depths, bias, white)
    got = ops.ray_march(colors, dens, depths, density_bias=bias, white_background=white, backend=backend)
    for name in OUTPUTS:
        assert_close(getattr(got, name), getattr(expect, name), rtol=1e-12, atol=1e-13, name=name)


# ---------------------------------------------------------------------------------- gradcheck and opcheck


@pytest.mark.parametrize("white", [False, True])
@pytest.mark.parametrize("lead", [(3,), (2, 2)])
def test_gradcheck_native(white, lead):
    colors, dens, depths = make_rays(lead, 5, 2, torch.float64, "moderate", seed=8)
    colors.requires_grad_(True)
    dens.requires_grad_(True)

    def fn(c, d):
        return tuple(ops.ray_march(c, d, depths, density_bias=-0.5, white_background=white, backend="native"))

    assert torch.autograd.gradcheck(fn, (colors, dens), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_gradcheck_native_with_repeated_depths_and_opaque_samples():
    colors, dens, depths = make_rays((4,), 6, 2, torch.float64, "moderate", seed=9)
    depths[:, 2] = depths[:, 1]  # delta = 0 interval
    dens[0] += 6.0  # a nearly opaque ray
    colors.requires_grad_(True)
    dens.requires_grad_(True)

    def fn(c, d):
        return tuple(ops.ray_march(c, d, depths, backend="native"))

    assert torch.autograd.gradcheck(fn, (colors, dens), eps=1e-6, atol=1e-8, rtol=1e-6)


def _op_args(lead, S, C, seed, white):
    colors, dens, depths = make_rays(lead, S, C, torch.float64, "moderate", seed=seed)
    return colors.requires_grad_(True), dens.requires_grad_(True), depths, -1.0, white


@pytest.mark.parametrize("lead,S,C,white", [((3,), 5, 2, False), ((2, 2), 3, 1, True)])
def test_opcheck_forward(lead, S, C, white):
    torch.library.opcheck(torch.ops.oneshot.ray_march.default, _op_args(lead, S, C, 1, white))


@pytest.mark.parametrize("present", ["all", "features+weights", "depth", "none"])
def test_opcheck_backward(present):
    colors, dens, depths, bias, white = _op_args((3,), 5, 2, 2, True)
    R, S, C = 3, 5, 2
    g = torch.Generator().manual_seed(0)
    full = {
        "features": torch.randn(R, C, dtype=torch.float64, generator=g),
        "depth": torch.randn(R, dtype=torch.float64, generator=g),
        "opacity": torch.randn(R, dtype=torch.float64, generator=g),
        "weights": torch.randn(R, S - 1, dtype=torch.float64, generator=g),
    }
    keep = set(OUTPUTS) if present == "all" else set() if present == "none" else set(present.split("+"))
    gs = [full[n] if n in keep else None for n in OUTPUTS]
    args = (*gs, colors.detach(), dens.detach(), depths, bias, white)
    torch.library.opcheck(torch.ops.oneshot.ray_march_backward.default, args)
    gc, gd = torch.ops.oneshot.ray_march_backward(*args)
    if present == "none":
        assert torch.equal(gc, torch.zeros_like(gc)) and torch.equal(gd, torch.zeros_like(gd))


# ------------------------------------------------------------------------------------------------ edge cases


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_two_samples_is_one_interval(dtype):
    colors, dens, depths = make_rays((5,), 2, 3, dtype, "moderate", seed=12)
    out, _ = compare(colors, dens, depths, seed=1)
    # One interval: closed form.
    c, s, t = (x.double() for x in (colors, dens, depths))
    sigma = torch.nn.functional.softplus((s[:, 0] + s[:, 1]) / 2 - 1)
    alpha = 1 - torch.exp(-sigma * (t[:, 1] - t[:, 0]))
    tol = 8 * torch.finfo(dtype).eps
    assert_close(out.weights[:, 0].double(), alpha, rtol=tol, atol=tol, name="weights")
    assert_close(out.opacity.double(), alpha, rtol=tol, atol=tol, name="opacity")
    assert_close(out.features.double(), alpha[:, None] * (c[:, 0] + c[:, 1]) / 2, rtol=tol, atol=4 * tol,
                 name="features")
    expect_depth = torch.where(alpha > 0, (t[:, 0] + t[:, 1]) / 2, t[:, 1])
    assert_close(out.depth.double(), expect_depth, rtol=tol, atol=tol * 4, name="depth")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("white", [False, True])
def test_fully_opaque_rays(dtype, white):
    colors, _, depths = make_rays((4,), 7, 3, dtype, seed=13)
    dens = torch.full(depths.shape, 1e4, dtype=dtype)
    out, (gc, gd) = compare(colors, dens, depths, seed=2, white_background=white)
    one = torch.ones_like(out.opacity)
    assert_close(out.opacity, one, atol=1e-9, name="opacity")
    assert_close(out.weights[:, 0], one, atol=1e-9, name="first weight")
    assert (out.weights[:, 1:] <= 1e-9).all()
    assert_close(out.depth, (depths[:, 0] + depths[:, 1]) / 2, rtol=1e-6, name="depth")
    assert_close(out.features, (colors[:, 0] + colors[:, 1]) / 2, rtol=1e-5, atol=1e-6, name="features")
    assert torch.isfinite(gc).all() and torch.isfinite(gd).all()


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("white", [False, True])
@pytest.mark.parametrize("backend", ["native", "reference"])
def test_fully_empty_rays(dtype, white, backend):
    """Opacity exactly 0: depth = t_{S-1}, features 0 (1 on white), depth passes no gradient, nothing NaN/inf."""
    colors, _, depths = make_rays((2, 3), 6, 4, dtype, seed=14)
    dens = torch.full(depths.shape, -1e4, dtype=dtype)
    c, d = colors.clone().requires_grad_(), dens.clone().requires_grad_()
    out = ops.ray_march(c, d, depths, white_background=white, backend=backend)
    assert torch.equal(out.opacity, torch.zeros_like(out.opacity))
    assert torch.equal(out.weights, torch.zeros_like(out.weights))
    assert torch.equal(out.depth, depths[..., -1])
    assert torch.equal(out.features, torch.full_like(out.features, 1.0 if white else 0.0))
    # The depth alone passes no gradient (and in particular no NaN from 0 / 0).
    cot = torch.randn(out.depth.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).to(dtype)
    g_depth = torch.autograd.grad(out.depth, (c, d), cot, retain_graph=True, allow_unused=True)
    assert g_depth[1] is not None  # densities do reach depth in the graph
    for g in g_depth:
        if g is None:
            continue
        assert torch.equal(g, torch.zeros_like(g))
    # All four outputs: finite gradients.
    cots = random_cotangents(out, 3)
    for g in grads(out, (c, d), cots):
        assert torch.isfinite(g).all()
    if backend == "native":
        compare(colors, dens, depths, seed=3, white_background=white)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_mixed_empty_opaque_and_ordinary_rays(dtype):
    colors, dens, depths = make_rays((6,), 9, 2, dtype, "moderate", seed=15)
    dens[0] = -1e4
    dens[1] = 1e4
    dens[2, :4] = -1e4
    dens[3, 5:] = 1e4
    out, (gc, gd) = compare(colors, dens, depths, seed=4)
    assert out.opacity[0] == 0 and out.depth[0] == depths[0, -1]
    assert torch.isfinite(gc).all() and torch.isfinite(gd).all()


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_repeated_depths(dtype):
    colors, dens, depths = make_rays((4,), 8, 3, dtype, "dense", seed=16)
    depths[0, 3] = depths[0, 2]  # one repeat
    depths[1, 1:5] = depths[1, 0]  # a run of repeats at the start
    depths[2, :] = depths[2, 0]  # all equal: no interval has any length
    depths[3, -3:] = depths[3, -3]  # repeats at the end
    out, (gc, gd) = compare(colors, dens, depths, seed=5)
    assert out.weights[0, 2] == 0
    assert (out.weights[1, :4] == 0).all()
    assert (out.weights[2] == 0).all() and out.opacity[2] == 0 and out.depth[2] == depths[2, -1]
    assert (out.weights[3, -2:] == 0).all()
    assert torch.isfinite(gc).all() and torch.isfinite(gd).all()


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_white_background_adds_one_minus_opacity(dtype):
    colors, dens, depths = make_rays((7,), 10, 3, dtype, "wide", seed=17)
    black = ops.ray_march(colors, dens, depths, backend="native")
    white = ops.ray_march(colors, dens, depths, white_background=True, backend="native")
    assert torch.equal(black.weights, white.weights) and torch.equal(black.depth, white.depth)
    expect = black.features + (1 - black.opacity).unsqueeze(-1)
    assert_close(white.features, expect, atol=2 * torch.finfo(dtype).eps, name="features")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_outputs_are_consistent(dtype):
    colors, dens, depths = make_rays((3, 4), 12, 3, dtype, "wide", True, seed=18)
    out = ops.ray_march(colors, dens, depths, backend="native")
    tol = 12 * 4 * torch.finfo(dtype).eps
    assert_close(out.opacity, out.weights.sum(-1), atol=tol, name="opacity = sum of weights")
    assert (out.weights >= 0).all() and (out.opacity <= 1 + 1e-6).all()
    assert ((out.depth >= depths[..., 0]) & (out.depth <= depths[..., -1])).all()


def test_density_bias_shifts_densities():
    colors, dens, depths = make_rays((5,), 7, 2, torch.float64, seed=19)
    a = ops.ray_march(colors, dens, depths, density_bias=0.7, backend="native")
    b = ops.ray_march(colors, dens + 0.7, depths, density_bias=0.0, backend="native")
    for name in OUTPUTS:
        assert_close(getattr(a, name), getattr(b, name), rtol=1e-12, atol=1e-13, name=name)


@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("lead,S,C", [((0,), 4, 3), ((3,), 4, 0), ((2, 0, 3), 2, 1), ((0,), 2, 0)])
def test_empty_inputs(backend, lead, S, C):
    colors, dens, depths = make_rays(lead, S, C, torch.float32, seed=0)
    c, d = colors.requires_grad_(), dens.requires_grad_()
    out = ops.ray_march(c, d, depths, backend=backend)
    assert out.features.shape == (*lead, C)
    assert out.depth.shape == lead and out.opacity.shape == lead
    assert out.weights.shape == (*lead, S - 1)
    gc, gd = grads(out, (c, d), [torch.ones_like(o) for o in out])
    assert gc.shape == c.shape and gd.shape == d.shape
    if C == 0 and colors.numel() == 0 and dens.numel():
        # No channels: the densities still get the gradients of depth, opacity and weights.
        assert torch.isfinite(gd).all()
