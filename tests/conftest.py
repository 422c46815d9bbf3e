"""Shared configuration and helpers of oneshot's test suite.

* Hypothesis profile "ci" (bounded, derandomised, no deadline) is loaded by default; pick another with
  ``HYPOTHESIS_PROFILE=dev`` (more examples, random).
* ``DEVICES``: the devices every device-parametrised test runs on.
* ``assert_close``: a comparison that says *where* and *by how much* two tensors differ.
"""

from __future__ import annotations

import contextlib
import os

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=20,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev",
    max_examples=200,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
FLOAT_DTYPES = [torch.float32, torch.float64]

# Awkward sizes: 1, small primes, powers of two and 2^k +- 1.
AWKWARD_SIZES = [1, 2, 3, 5, 7, 8, 9, 11, 13, 15, 16, 17, 31, 32, 33]


def eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


def assert_close(actual, expected, rtol: float = 0.0, atol=0.0, name: str = "tensor") -> None:
    """|actual - expected| <= atol + rtol * |expected| elementwise (atol may be a broadcastable tensor).

    Shapes and dtypes must match exactly; NaNs must appear at the same places. On failure the message gives
    the number of offending elements, the largest absolute and relative difference and where they occur.
    """
    assert isinstance(actual, torch.Tensor) and isinstance(expected, torch.Tensor), name
    assert actual.shape == expected.shape, f"{name}: shape {list(actual.shape)} != expected {list(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype} != expected {expected.dtype}"
    if actual.numel() == 0:
        return
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    nan_a, nan_e = torch.isnan(a), torch.isnan(e)
    if not torch.equal(nan_a, nan_e):
        where = torch.nonzero(nan_a != nan_e)[0].tolist()
        raise AssertionError(f"{name}: NaN pattern differs ({int((nan_a != nan_e).sum())} elements), e.g. at {where}: "
                             f"actual {a[tuple(where)].item()!r}, expected {e[tuple(where)].item()!r}")
    a = torch.where(nan_a, torch.zeros_like(a), a)
    e = torch.where(nan_e, torch.zeros_like(e), e)
    if isinstance(atol, torch.Tensor):
        atol = atol.detach().to("cpu", torch.float64)
    same_inf = torch.isinf(a) & torch.isinf(e) & (torch.sign(a) == torch.sign(e))
    diff = torch.where(same_inf, torch.zeros_like(a), (a - e).abs())
    diff = torch.nan_to_num(diff, nan=float("inf"))
    allowed = atol + rtol * e.abs()
    bad = diff > allowed
    if bool(bad.any()):
        n_bad = int(bad.sum())
        rel = diff / e.abs().clamp_min(torch.finfo(torch.float64).tiny)
        i_abs = torch.unravel_index(torch.argmax(torch.where(bad, diff, torch.zeros_like(diff))), diff.shape)
        i_abs = tuple(int(i) for i in i_abs)
        i_rel = tuple(int(i) for i in torch.unravel_index(torch.argmax(torch.where(bad, rel, torch.zeros_like(rel))), rel.shape))
        allowed_at = allowed[i_abs].item() if isinstance(allowed, torch.Tensor) and allowed.dim() else float(allowed)
        raise AssertionError(
            f"{name}: {n_bad} of {diff.numel()} elements differ beyond atol/rtol (rtol={rtol:g}); "
            f"max abs diff {diff[i_abs].item():.6g} at index {list(i_abs)} "
            f"(actual {a[i_abs].item():.17g}, expected {e[i_abs].item():.17g}, allowed {allowed_at:.3g}); "
            f"max rel diff {rel[i_rel].item():.6g} at index {list(i_rel)}"
        )


@contextlib.contextmanager
def deterministic_mode(alert: str):
    """Expect the block to raise torch's nondeterminism alert naming `alert` under use_deterministic_algorithms."""
    torch.use_deterministic_algorithms(True)
    try:
        with pytest.raises(RuntimeError, match=alert):
            yield
    finally:
        torch.use_deterministic_algorithms(False)


@contextlib.contextmanager
def num_threads(n: int):
    """Run a block with torch's intra-op thread count set to n, restoring it afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def has_native(op: str, device) -> bool:
    """Whether backend="native" can run `op` on `device` in this build."""
    from oneshot.ops import _backend

    return _backend.has_native_kernel(op, torch.device(device))


def require_native(op: str, device) -> None:
    """Native kernels are part of the CPU contract; on other devices they arrive with later issues."""
    if has_native(op, device):
        return
    if torch.device(device).type == "cpu":
        pytest.fail(f"the native CPU kernel of {op} is unavailable: {__import__('oneshot').ops.backend_info()}")
    pytest.skip(f"no native {device} kernel for {op} in this build")


LAYOUTS = ["contiguous", "transposed", "strided"]


def with_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as x, laid out as `layout`: "contiguous", "transposed" (last two dims stored swapped,
    i.e. a transposed view) or "strided" (every other element of a twice-as-long last dim)."""
    if layout == "contiguous":
        return x.contiguous()
    if layout == "transposed":
        if x.dim() < 2:
            return with_layout(x, "strided")
        return x.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout == "strided":
        pad = torch.full_like(x, float("nan")) if x.is_floating_point() else torch.zeros_like(x)
        return torch.stack([x, pad], dim=-1).flatten(-2)[..., ::2]
    raise ValueError(layout)


def grads(outputs, inputs, cotangents):
    """torch.autograd.grad with the given cotangents; outputs whose cotangent is None are left out."""
    pairs = [(o, c) for o, c in zip(outputs, cotangents) if c is not None]
    gs = torch.autograd.grad([o for o, _ in pairs], inputs, [c for _, c in pairs], allow_unused=True)
    # An input no used output depends on gets None from autograd: that is a zero gradient.
    return tuple(torch.zeros_like(x) if g is None else g for g, x in zip(gs, inputs))


@pytest.fixture
def one_thread():
    """Torch on one thread for the test: the tiny avatar's small convolutions run several times slower with two
    threads on a shared 2-core CPU (and results within a test then come from one thread count)."""
    with num_threads(1):
        yield
