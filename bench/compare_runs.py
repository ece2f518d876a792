"""Are two detect run folders the same result? Rasters byte for byte, polygons geometry for geometry
and attribute for attribute (but the run's own id), the preview pixel for pixel, the metrics.

    python bench/compare_runs.py runs-before/demo-town_2021-06-14_2023-06-21 runs-after/demo-town_2021-06-14_2023-06-21

Used to check that a refactoring leaves the demo's outputs unchanged (docs/performance.md).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from PIL import Image

RUN_SPECIFIC = ["run_id"]  # the flow run's own id, different in every run


def compare(a: Path, b: Path) -> dict[str, bool]:
    same = {}
    for name in ("change.tif", "change_prob.tif"):
        with rasterio.open(a / name) as x, rasterio.open(b / name) as y:
            same[f"{name} pixels and georeferencing"] = (np.array_equal(x.read(), y.read()) and x.transform == y.transform
                                                         and x.crs == y.crs)
        same[f"{name} bytes"] = (a / name).read_bytes() == (b / name).read_bytes()
    pa, pb = gpd.read_parquet(a / "changes.parquet"), gpd.read_parquet(b / "changes.parquet")
    same["changes.parquet geometries"] = len(pa) == len(pb) and bool(pa.geometry.geom_equals(pb.geometry).all())
    same["changes.parquet attributes"] = pa.drop(columns=["geometry", *RUN_SPECIFIC]).equals(
        pb.drop(columns=["geometry", *RUN_SPECIFIC]))
    same["preview.png pixels"] = np.array_equal(np.asarray(Image.open(a / "preview.png")),
                                                np.asarray(Image.open(b / "preview.png")))
    ma, mb = (json.loads((p / "run.json").read_text()) for p in (a, b))
    strip = lambda m: {k: v for k, v in (m.get("metrics") or {}).items() if k != "truth"}  # noqa: E731
    same["run.json metrics"] = strip(ma) == strip(mb)
    same["run.json changed area and polygons"] = (ma["changed_km2"], ma["polygons"]) == (mb["changed_km2"], mb["polygons"])
    return same


if __name__ == "__main__":
    results = compare(Path(sys.argv[1]), Path(sys.argv[2]))
    for what, equal in results.items():
        print(f"{'same' if equal else 'DIFFERENT'}: {what}")
    sys.exit(0 if all(results.values()) else 1)
