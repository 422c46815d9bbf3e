"""oneshot's kernels as PyTorch ops: ``triplane_sample``, ``ray_march``, ``render_triplane`` (the two fused with
the decoder MLP), ``rasterize_points``, ``rasterize_mesh``.

Every op has a pure-PyTorch reference (:mod:`oneshot.ops.reference`), native C++ (CPU) kernels registered
as ``torch.ops.oneshot.<op>`` (with fake kernels and autograd, so ``torch.compile`` and ``opcheck`` work),
and picks the fastest available implementation unless ``backend=`` forces one (the choice, and whether a volume
render takes the fused op, is made in one place: :func:`use_fused_render` and the private ``_backend`` module).
"""

from __future__ import annotations

import torch

from .. import _extension
from . import reference
from ._backend import BACKENDS, FUSED_AUTO_DEVICES, has_native_kernel, triton_available, use_fused_render
from ._common import PLANE_AXES_EG3D, PLANE_AXES_GOHA, check_axes, check_resolution
from .mesh import rasterize_mesh
from .raster import rasterize_points
from .raymarch import RayMarchResult, ray_march
from .render import (FusableDecoder, RenderTriplaneResult, decoder_weights, reference_render_triplane,
                     render_triplane)
from .triplane import channels_last, triplane_sample

__all__ = [
    "triplane_sample",
    "ray_march",
    "RayMarchResult",
    "render_triplane",
    "RenderTriplaneResult",
    "decoder_weights",
    "FusableDecoder",
    "reference_render_triplane",
    "use_fused_render",
    "FUSED_AUTO_DEVICES",
    "has_native_kernel",
    "check_axes",
    "channels_last",
    "check_resolution",
    "rasterize_points",
    "rasterize_mesh",
    "PLANE_AXES_GOHA",
    "PLANE_AXES_EG3D",
    "BACKENDS",
    "backend_info",
    "empty_cpu_cache",
    "reference",
]


def backend_info() -> dict:
    """Which implementations this install can run, and why a missing one is missing."""
    st = _extension.status()
    return {
        "native_cpu": st.loaded,
        "native_cuda": st.loaded and st.with_cuda,
        "triton": triton_available(torch.device("cuda" if torch.cuda.is_available() else "cpu")),
        "extension_source": st.source,
        "extension_built_against_torch": st.built_torch,
        "extension_error": st.error,
    }


def empty_cpu_cache() -> int:
    """Free the large CPU output buffers the native kernels keep for reuse; returns the bytes freed.

    The CPU kernels hand out their largest outputs (``ray_march``'s colour gradient, the tri-plane gradient,
    rasterized planes: tens to hundreds of MB) from a small cache, so that a training loop does not pay the
    kernel's page zeroing on every step (the CPU analogue of ``torch.cuda.empty_cache``). It holds at most
    ``ONESHOT_CPU_CACHE_MB`` MiB (default 1024; ``0`` turns it off). Returns 0 without the extension.
    """
    if not _extension.status().loaded:
        return 0
    return int(torch.ops.oneshot._empty_cpu_cache())
