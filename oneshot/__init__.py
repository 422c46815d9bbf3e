"""oneshot: Generalizable One-shot Neural Head Avatar (NeurIPS 2023) on handwritten C++/CUDA/Triton kernels.

``import oneshot`` never fails for lack of a compiled extension: the ops then run their pure-PyTorch
reference and one warning says what to rebuild (see :func:`oneshot.ops.backend_info`).
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import ops
from ._extension import ExtensionUnavailableWarning

__all__ = ["ops", "ExtensionUnavailableWarning", "__version__"]
