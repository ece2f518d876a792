"""JSON files that are either the old version or the new one, never half of either.

Registry records, alias maps and evaluation reports are read by other processes while they are
being replaced; each is written aside and renamed into place (``flows.files.atomic``), so a reader
or a crash never sees a torn file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from flows.files.atomic import fsync_dir, write_text_atomic  # noqa: F401 - fsync_dir: for callers


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as ``None``: strict JSON (browsers, jq, Prefect tables) has no NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", None) == 0:  # numpy scalars
        return json_safe(value.item())
    if isinstance(value, Path):
        return str(value)
    return value


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """Write ``data`` as strict JSON to ``path`` through a temporary file and a rename."""
    text = json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n"  # fails before anything is written
    return write_text_atomic(path, text)


def read_json(path: str | Path) -> Any:
    """A JSON file written by ``write_json_atomic`` (or any JSON file)."""
    with open(path) as f:
        return json.load(f)
