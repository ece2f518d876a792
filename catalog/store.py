"""``scenes.zarr``: written once, aside, and only then put in place; reused when its inputs match.

A store records a hash of everything that determines its content (region, dates, chosen scenes,
bands, grid, chunks) and a ``complete`` flag set after the last chunk is written. A store is
written under a temporary name and renamed into place, so a crash never leaves a store at the
final path that looks complete; a stale or foreign store there is replaced, never patched.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import rioxarray  # noqa: F401  (registers the .rio accessor that reads the stored CRS and transform)
import xarray as xr
import zarr

COMPLETE = "complete"
INPUTS = "inputs_hash"


def inputs_hash(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def is_complete(path: str | Path, key: str | None = None) -> bool:
    path = Path(path)
    if not path.is_dir():
        return False
    try:
        attrs = zarr.open_group(str(path), mode="r").attrs
    except Exception:  # an unreadable or foreign folder is not a complete store
        return False
    return bool(attrs.get(COMPLETE)) and (key is None or attrs.get(INPUTS) == key)


def write_scenes(dataset: xr.Dataset, path: str | Path, key: str, chunk: int) -> bool:
    """Write ``dataset`` to ``path`` unless a complete store for ``key`` is there; True if reused."""
    path = Path(path)
    if is_complete(path, key):
        return True
    tmp = path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:8]}")
    dataset = dataset.assign_attrs({INPUTS: key, COMPLETE: False})
    encoding = {
        "image": {"chunks": (1, dataset.sizes["band"], chunk, chunk)},
        "valid": {"chunks": (1, chunk, chunk)},
    }
    try:
        dataset.chunk({"time": 1, "band": -1, "y": chunk, "x": chunk}).to_zarr(
            str(tmp), mode="w", zarr_format=3, consolidated=False, encoding=encoding
        )
        zarr.open_group(str(tmp), mode="r+").attrs[COMPLETE] = True
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return False


def open_scenes(path: str | Path) -> xr.Dataset:
    """A complete store, lazily, with its CRS and transform (``decode_coords='all'``)."""
    if not is_complete(path):
        raise FileNotFoundError(f"{path} is not a complete scenes store (missing, foreign or half-written)")
    return xr.open_zarr(str(path), decode_coords="all", consolidated=False)
