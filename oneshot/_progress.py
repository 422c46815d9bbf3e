"""The one way oneshot draws progress: a tqdm bar on stderr, quiet when asked or when stderr is not a terminal."""

from __future__ import annotations

import sys

__all__ = ["progress_bar"]


def progress_bar(total: float | None = None, *, desc: str, unit: str = "it", enabled: bool = True, **kwargs):
    """A tqdm bar (use it as a context manager). `enabled=False` (``--quiet``) hides it; so does a stderr that is not
    a terminal (logs, CI), where a bar would only add carriage returns."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=None if enabled else True, file=sys.stderr,
                dynamic_ncols=True, **kwargs)
