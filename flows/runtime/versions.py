"""Which code made a result: the versions of the packages that matter and a hash of our own code.

Run manifests record both, and the resume keys of blocks and outputs include the hash, so that
files made by other code are never reused.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path

PACKAGES = ("dsqnet-flows", "torch", "timm", "prefect", "prefect-dask", "dask", "distributed", "xarray", "zarr",
            "rasterio", "geopandas", "shapely", "pystac", "odc-stac", "numpy")

def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def code_version(*roots: Path) -> str:
    """The package version plus a hash of the code that makes the probabilities (part of the resume key)."""
    digest = hashlib.sha256()
    for root in roots:
        for path in sorted(root.rglob("*.py")) if root.is_dir() else [root]:
            digest.update(path.read_bytes())
    return f"{package_versions()['dsqnet-flows']}+{digest.hexdigest()[:12]}"
