"""Run records for resumable jobs (``animate``'s frames, ``evaluate``'s scored pairs, ``export``'s meshes): the
arguments that decide a job's results are written next to them, and a resumed run must bring the same ones."""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["resolved_paths", "record_differences", "write_record"]


def resolved_paths(values: dict, path_keys) -> dict:
    """`values` with the entries named in `path_keys` made absolute (so a run resumed from another folder matches)."""
    def resolve(v):
        if isinstance(v, (list, tuple)):
            return [str(Path(x).resolve()) for x in v]
        return None if v is None else str(Path(v).resolve())

    return {k: resolve(v) if k in path_keys else v for k, v in values.items()}


def record_differences(path, record: dict) -> list[str]:
    """The keys of `record` whose values differ from the record an earlier run left at `path` (every key when that
    file is unreadable; none when there is no file)."""
    p = Path(path)
    if not p.is_file():
        return []
    try:
        old = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        old = {}
    return sorted(k for k in record if old.get(k) != record[k])


def write_record(path, record: dict) -> None:
    """Write `record` as JSON atomically."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, p)
