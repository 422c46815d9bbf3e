"""Drop-ins for other code bases' modules, built on oneshot's kernels.

* :mod:`oneshot.compat.eg3d`: EG3D's tri-plane renderer (``ImportanceRenderer``, ``MipRayMarcher2``,
  ``RaySampler``, ``sample_from_planes``, ``OSGDecoder``, ...) with EG3D's names, signatures and values, and
  ``patch()`` / ``unpatch()`` to swap it into an existing EG3D-derived code base (EG3D, GOHA, Next3D, ...)
  without editing its files.
"""

from __future__ import annotations

from . import eg3d

__all__ = ["eg3d"]
