"""oneshot's kernels as PyTorch ops: ``triplane_sample``, ``ray_march``, ``rasterize_points``.

Every op has a pure-PyTorch reference (:mod:`oneshot.ops.reference`), native C++ (CPU) kernels registered
as ``torch.ops.oneshot.<op>`` (with fake kernels and autograd, so ``torch.compile`` and ``opcheck`` work),
and picks the fastest available implementation unless ``backend=`` forces one.
"""

from __future__ import annotations

from .. import _extension
from . import reference
from ._common import BACKENDS, PLANE_AXES_EG3D, PLANE_AXES_GOHA
from .raster import rasterize_points
from .raymarch import RayMarchResult, ray_march
from .triplane import triplane_sample

__all__ = [
    "triplane_sample",
    "ray_march",
    "RayMarchResult",
    "rasterize_points",
    "PLANE_AXES_GOHA",
    "PLANE_AXES_EG3D",
    "BACKENDS",
    "backend_info",
    "reference",
]


def backend_info() -> dict:
    """Which implementations this install can run, and why a missing one is missing."""
    st = _extension.status()
    return {
        "native_cpu": st.loaded,
        "native_cuda": st.loaded and st.with_cuda,
        "triton": False,
        "extension_source": st.source,
        "extension_built_against_torch": st.built_torch,
        "extension_error": st.error,
    }
