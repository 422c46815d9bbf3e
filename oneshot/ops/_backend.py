"""The one place that decides which implementation runs.

* Facts about the loaded build: which ``oneshot::<op>`` kernels exist for which device (:func:`kernel_registered`,
  :func:`op_exists`, :func:`has_native_kernel`), and whether Triton can run (:func:`triton_unavailable_reason`).
* :func:`resolve_backend`: the implementation of one op call ("reference", "native" or "triton").
* :func:`use_fused_render`: whether a volume render takes the fused ``render_triplane`` op or the composed ops
  (``triplane_sample`` -> decoder -> ``ray_march``), with the rules that measurements set (see there).

Nothing here imports an op module or triton: the op modules ask, then register and run what was chosen.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from .. import _extension

__all__ = ["BACKENDS", "NATIVE_DTYPES", "TRITON_DTYPES", "NATIVE_OPS", "TRITON_OPS", "FUSED_AUTO_DEVICES",
           "kernel_registered", "op_exists", "has_native_kernel", "triton_unavailable_reason", "triton_available",
           "resolve_backend", "use_fused_render"]

BACKENDS = (None, "auto", "reference", "native", "triton")
# dtypes of the "value" tensor (planes, colors, features) the native kernels take, per device type. On CPU the
# geometry (points, densities, depths) has the same dtype; on CUDA 16-bit values come with float32 geometry.
NATIVE_DTYPES = {
    "cpu": (torch.float32, torch.float64),
    "cuda": (torch.float16, torch.bfloat16, torch.float32, torch.float64),
}
#: dtypes of the value tensor the Triton kernels take (16-bit values come with float32 geometry; no float64).
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
NATIVE_OPS = ("triplane_sample", "triplane_sample_backward", "ray_march", "ray_march_backward", "render_triplane",
              "render_triplane_backward", "rasterize_points", "rasterize_points_backward", "rasterize_mesh")
#: The ops with a Triton twin (``oneshot::<op>_triton``, kernels in :mod:`oneshot.kernels`).
TRITON_OPS = ("triplane_sample", "ray_march", "rasterize_points", "render_triplane")
#: Device types on which ``use_fused_render(None, ...)`` takes the fused op: where it was measured faster than the
#: composed ops (benchmarks/results/render_cpu.md: 1.4x forward+backward and 21x less peak memory at the paper's
#: size on a 2-core CPU). Not "cuda": the CUDA kernel is tested (in the CPU emulator) but not measured on a GPU yet;
#: ``fused=True`` takes it.
FUSED_AUTO_DEVICES = ("cpu",)


def _registered(op: str, key: str) -> bool:
    try:
        return bool(torch._C._dispatch_has_kernel_for_dispatch_key(f"oneshot::{op}", key))
    except RuntimeError:  # no such op
        return False


# Facts about the loaded build, taken once at import: a plain frozenset, so torch.compile reads it as a
# constant (it cannot trace the dispatcher query itself).
_KERNELS = frozenset(
    (op, key) for op in NATIVE_OPS for key in ("CPU", "CUDA") if _extension.status().loaded and _registered(op, key)
)


def kernel_registered(op: str, key: str) -> bool:
    """Whether ``oneshot::<op>`` has a kernel for dispatch key `key` ("CPU", "CUDA") in the loaded extension."""
    return (op, key) in _KERNELS


def op_exists(op: str) -> bool:
    """Whether the loaded extension defines ``oneshot::<op>`` (an older build of the same torch may not)."""
    return kernel_registered(op, "CPU")


def has_native_kernel(op: str, device: torch.device) -> bool:
    """Whether backend="native" has a kernel of `op` for `device` in this build (a meta device counts as CPU)."""
    if not _extension.status().loaded:
        return False
    if device.type in ("cpu", "meta"):
        return op_exists(op)
    key = {"cuda": "CUDA"}.get(device.type)
    return key is not None and kernel_registered(op, key)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_unavailable_reason(device: torch.device) -> str | None:
    """Why backend="triton" cannot run on `device` (None when it can). The Triton backend runs on CUDA tensors;
    CPU tensors only under ``TRITON_INTERPRET=1`` (Triton's interpreter, for tests)."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install triton)"
    if device.type == "cuda":
        return None
    if device.type == "cpu" and _interpreting():
        return None
    return (f"the Triton backend needs CUDA tensors, got {device.type} tensors (CPU tensors run only in Triton's "
            "interpreter, with TRITON_INTERPRET=1 set before the first use, for tests)")


def triton_available(device: torch.device) -> bool:
    return triton_unavailable_reason(device) is None


def _dtype_text(dtype: torch.dtype, geom_dtype: torch.dtype) -> str:
    return str(dtype) if geom_dtype == dtype else f"{dtype} with {geom_dtype} geometry"


def resolve_backend(backend, op: str, device: torch.device, dtype: torch.dtype,
                    geom_dtype: torch.dtype | None = None) -> str:
    """The implementation to run: "reference", "native" or "triton".

    `dtype` is the value tensor's dtype, `geom_dtype` the geometry's (default: the same). None / "auto": the
    fastest available for the device and dtypes (native where it exists; Triton is never picked automatically
    until GPU benchmarks show it ahead of the CUDA kernels for an op). A forced backend that cannot run raises a
    RuntimeError (unavailable) or TypeError (unsupported dtype) saying why. The caller registers the Triton twin
    of its op when "triton" comes back.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    geom_dtype = dtype if geom_dtype is None else geom_dtype
    kind = "cpu" if device.type == "meta" else device.type
    native_dtypes = NATIVE_DTYPES.get(kind, ())
    # The CPU kernels take one dtype for the whole call; on CUDA check_dtypes has vetted the pair.
    dtypes_ok = dtype in native_dtypes and (kind != "cpu" or geom_dtype == dtype)
    if backend in (None, "auto"):
        if dtypes_ok and has_native_kernel(op, device):
            return "native"
        return "reference"
    if backend == "reference":
        return "reference"
    if backend == "native":
        st = _extension.status()
        if not st.loaded:
            raise RuntimeError(f"backend='native' is unavailable: {st.error}")
        if not has_native_kernel(op, device):
            raise RuntimeError(
                f"backend='native' has no {device.type} kernel for {op} in this build"
                + (" (built without CUDA: rebuild with FORCE_CUDA=1 and nvcc)" if device.type == "cuda" else "")
            )
        if not dtypes_ok:
            names = ", ".join(str(d).replace("torch.", "") for d in native_dtypes)
            raise TypeError(f"backend='native' supports {names} on {device.type} for {op}, got "
                            f"{_dtype_text(dtype, geom_dtype)}")
        return "native"
    # backend == "triton"
    if op not in TRITON_OPS:
        raise RuntimeError(f"backend='triton' is unavailable for {op}: it has reference and native implementations "
                           f"(Triton twins exist for {', '.join(TRITON_OPS)})")
    why = triton_unavailable_reason(device)
    if why is not None:
        raise RuntimeError(f"backend='triton' is unavailable for {op}: {why}")
    if dtype not in TRITON_DTYPES or geom_dtype != torch.float32:
        raise TypeError(
            f"backend='triton' supports float32, and float16 / bfloat16 values with float32 geometry, for {op} "
            f"(no float64: use backend='native' or 'reference'), got {_dtype_text(dtype, geom_dtype)}"
        )
    return "triton"


def use_fused_render(fused: bool | None, *, device: torch.device, dtype: torch.dtype, decoder,
                     backend=None) -> bool:
    """Whether a volume render of `dtype` planes on `device` takes the fused op ``render_triplane`` (True) or the
    composed ops ``triplane_sample`` -> decoder -> ``ray_march`` (False). Both compute the same values; the fused
    op keeps none of the per-sample tensors for the backward (it recomputes them).

    Args:
        fused: the ``fused`` setting (:class:`~oneshot.models.RenderSettings`, ``AvatarConfig.fused``).
            None (automatic): fused when all of these hold: the decoder is EG3D's (it exposes ``effective_weights()``,
            :class:`~oneshot.ops.FusableDecoder`); `backend` is None / "auto" / "native"; this build has a native
            ``render_triplane`` kernel for the device and dtype; and the device type is in
            :data:`FUSED_AUTO_DEVICES` (where it measured faster: the CPU; CUDA stays composed until its kernel is
            measured on a GPU). Otherwise composed.
            True: fused, or a TypeError / RuntimeError naming why it cannot run (no ``effective_weights()``, no
            kernel for the device and dtype, a `backend` that cannot run it). False: composed.
        device (torch.device): the planes' device.
        dtype (torch.dtype): the planes' dtype (16-bit planes are rendered in float32).
        decoder (torch.nn.Module): the decoder module of the render.
        backend (str | None): the renderer's backend (None / "auto", "reference", "native", "triton"); a fused
            render runs ``render_triplane`` with it.
    """
    if fused is not None and not isinstance(fused, bool):
        raise TypeError(f"fused must be None (automatic), True or False, got {fused!r}")
    if fused is False:
        return False
    fusable = callable(getattr(decoder, "effective_weights", None))
    compute = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    if fused is None:
        return (fusable and backend in (None, "auto", "native") and device.type in FUSED_AUTO_DEVICES
                and resolve_backend(None, "render_triplane", device, compute) == "native")
    if not fusable:
        raise TypeError(f"fused=True needs EG3D's decoder: a module with effective_weights() -> (w1, b1, w2, b2) "
                        f"(oneshot.ops.FusableDecoder, e.g. oneshot.models.TriplaneDecoder), got "
                        f"{type(decoder).__name__}; use fused=None (automatic) or False")
    impl = resolve_backend(backend, "render_triplane", device, compute)  # a forced backend that cannot run raises
    if impl == "reference" and backend != "reference":  # auto found no kernel: say which fact is missing
        st = _extension.status()
        if not st.loaded:
            why = st.error
        elif not has_native_kernel("render_triplane", device):
            why = f"this build has no {device.type} kernel for render_triplane"
        else:
            why = f"the native kernel takes float32 / float64 (or 16-bit planes), got {dtype}"
        raise RuntimeError(f"fused=True: no fused render_triplane kernel for {device.type} {dtype} planes ({why}); "
                           f"use fused=None (automatic) or False for the composed ops")
    return True
