"""What the Triton kernels share: launch helpers, autotuning, and the per-element math of more than one op.

Autotuning. On a GPU every kernel is a ``triton.autotune`` over a short list of configs (block sizes,
``num_warps``, ``num_stages``), keyed on the arguments that change the best choice (channels, layer widths,
the constexpr switches; Triton adds the tensors' dtypes). Sizes that only bound loops and masks (points,
rays, samples, plane height and width) are neither keys nor specialised (``do_not_specialize``), so a new
batch or resolution reuses the compiled kernels and the tuned choice.

Triton 3.9's interpreter (``TRITON_INTERPRET=1``) cannot autotune by itself: with more than one config the
autotuner asks the active GPU driver for its benchmarker and fails with "0 active drivers" on a machine without a
GPU; given a ``do_bench`` of its own it runs every config through the interpreter (and adds a kernel's atomics
once per config unless ``reset_to_zero`` names the buffer). So in the interpreter, and on a GPU with
``ONESHOT_TRITON_AUTOTUNE=0``, :func:`autotune` leaves the kernel as it is and the launcher passes one fixed
config, :func:`fixed` (the block sizes the kernels had before they were tuned, so interpreter runs cost what they
did). ``ONESHOT_TRITON_AUTOTUNE=interpret`` autotunes in the interpreter too, with a stand-in benchmark that runs
each config once (one per set of block sizes: num_warps and num_stages mean nothing there) and picks the last:
the tests use it to check the autotuned path (every config run on the same buffers, then the pick) against the
reference. tests/test_triton_configs.py also runs every config alone.
"""

from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

__all__ = ["interpreting", "autotuning", "autotune", "fixed", "forced_config", "configs", "launch", "next_pow2",
           "log1p", "taps"]


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1, read when triton.jit decorates)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def autotuning() -> bool:
    """Whether the kernels are autotuned: on a GPU unless ONESHOT_TRITON_AUTOTUNE=0; in the interpreter only with
    ONESHOT_TRITON_AUTOTUNE=interpret (read when the kernels are imported)."""
    mode = os.environ.get("ONESHOT_TRITON_AUTOTUNE", "1")
    return mode == "interpret" if interpreting() else mode not in ("", "0")


_TUNE = autotuning()
_BENCH_CALLS = [0]


def _interpreter_bench(kernel_call, quantiles):
    """The interpreter's stand-in for timing a config: run it once; later configs come out faster (so the pick is
    the last config, not the first)."""
    kernel_call()
    _BENCH_CALLS[0] += 1
    return [1e6 - _BENCH_CALLS[0]] * len(quantiles)


def autotune(configs: list, key: list[str], reset_to_zero: list[str] | None = None):
    """``triton.autotune(configs, key, reset_to_zero)`` when :func:`autotuning`, else the kernel unchanged (its
    launcher then passes :func:`fixed`). `reset_to_zero` names the buffers a kernel adds into with atomics: the
    autotuner runs each config once while timing, and would otherwise add the result once per config."""

    def wrap(fn):
        if not _TUNE:
            return fn
        if interpreting():
            distinct = {tuple(sorted(c.kwargs.items())): c for c in reversed(configs)}  # the first of each
            return triton.autotune(configs=list(reversed(distinct.values())), key=key, reset_to_zero=reset_to_zero,
                                   do_bench=_interpreter_bench)(fn)
        return triton.autotune(configs=configs, key=key, reset_to_zero=reset_to_zero)(fn)

    return wrap


_FORCED: dict = {}


def fixed(**meta) -> dict:
    """The launch's meta-parameters (block sizes, num_warps, num_stages) when the kernel is not autotuned; {} when
    it is (the autotuner supplies them, and passing them as well would be a conflict). Inside
    :func:`forced_config` the forced values replace those of the same name."""
    if _TUNE:
        return {}
    return {k: _FORCED.get(k, v) for k, v in meta.items()}


@contextlib.contextmanager
def forced_config(config):
    """Launch the untuned kernels with `config`'s (a triton.Config) values for the meta-parameters it names, e.g.
    to test every config of an autotune list in the interpreter."""
    global _FORCED
    saved = _FORCED
    _FORCED = {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages}
    try:
        yield
    finally:
        _FORCED = saved


def configs(space: list[dict], warps=(4,), stages=(1,)) -> list:
    """triton.Config for every block-size dict in `space` x num_warps x num_stages."""
    return [triton.Config(dict(kw), num_warps=w, num_stages=s) for kw in space for w in warps for s in stages]


def launch(kernel):
    """The kernel as torch.compile wants to see it inside a torch.library.triton_op (wrap_triton, which takes a
    jit function or an autotuner over one), or as is in the interpreter, whose kernels wrap_triton does not accept
    (the interpreter is eager-only)."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    if not interpreting() and isinstance(kernel, (JITFunction, Autotuner)):
        return torch.library.wrap_triton(kernel)
    return kernel


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


# ---------------------------------------------------------------------------------------------------------- #
# Per-element math shared by more than one op (the Triton twins of csrc/common's inline functions).


@triton.jit
def log1p(x):
    """log(1 + x) for x >= 0 with full relative precision for small x (Goldberg): log(u) * x / (u - 1)."""
    u = 1.0 + x
    d = u - 1.0
    return tl.where(d == 0.0, x, tl.log(u) * (x / tl.where(d == 0.0, 1.0, d)))


@triton.jit
def taps(x, y, W, H):
    """grid_sample(bilinear, zeros, align_corners=False) geometry at normalised (x, y) [BLOCK] of a W x H plane:
    the top-left tap (int32), the fractions, and whether any tap can be inside (False also for NaN)."""
    ix = ((x + 1.0) * W - 1.0) / 2.0
    iy = ((y + 1.0) * H - 1.0) / 2.0
    anyin = (ix >= -1.0) & (ix < W) & (iy >= -1.0) & (iy < H)
    ix = tl.where(anyin, ix, 0.0)
    iy = tl.where(anyin, iy, 0.0)
    fx = tl.floor(ix)
    fy = tl.floor(iy)
    return fx.to(tl.int32), fy.to(tl.int32), ix - fx, iy - fy, anyin
