"""How well a run found a known change: the benchmark's pixel metrics against true change polygons.

Only pixels observed in both dates count; the truth (GeoParquet polygons in any CRS, or a raster on
any grid) is put onto the run's grid one block at a time.
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import rasterio.features
from affine import Affine
from rasterio.warp import Resampling, reproject

from dsqnet.metrics import ConfusionMatrix

from flows.blocks.store import ProbabilityStore
from flows.outputs.classes import NOT_OBSERVED, change_classes
from flows.blocks.lattice import Block
from flows.params.inputs import truth_extent


def truth_on_block(truth: Path | gpd.GeoDataFrame, block: Block, transform: Affine, crs) -> np.ndarray:
    """The true change (0/1) on one block of the run's grid."""
    local = transform * Affine.translation(block.left, block.top)
    if isinstance(truth, gpd.GeoDataFrame):
        shapes = [g for g in truth.geometry if g is not None and not g.is_empty]
        if not shapes:
            return np.zeros(block.shape, np.uint8)
        return rasterio.features.rasterize(((g, 1) for g in shapes), out_shape=block.shape, transform=local,
                                           dtype=np.uint8)
    with rasterio.open(truth) as src:
        target = np.zeros(block.shape, np.uint8)
        reproject(rasterio.band(src, 1), target, dst_transform=local, dst_crs=crs, resampling=Resampling.nearest)
        return (target > 0).astype(np.uint8)


def truth_outside(truth_path: str | Path, grid) -> str | None:
    """Why the truth cannot score a run on ``grid`` (an odc-geo GeoBox): it lies wholly outside it.
    Found only at the end, it gave "F1 nan" after the whole run; said before the blocks, the run
    has lost nothing. None when they overlap (or the truth holds no polygon)."""
    from rasterio.warp import transform_bounds

    crs, bounds = truth_extent(truth_path)
    if bounds is None:
        return None
    bounds = transform_bounds(crs, grid.crs.to_wkt(), *bounds)
    left, bottom, right, top = grid.boundingbox
    if bounds[0] < right and bounds[2] > left and bounds[1] < top and bounds[3] > bottom:
        return None
    shown = ", ".join(f"{v:.0f}" for v in bounds)
    return (f"truth: {truth_path} lies wholly outside the run's grid (its bounds {shown} against the grid's "
            f"{left:.0f}, {bottom:.0f}, {right:.0f}, {top:.0f} in {grid.crs}), so no pixel of it could be scored; "
            "give the truth of this region and dates")


def score_run(store: ProbabilityStore, blocks: list[Block], transform: Affine, crs, threshold: float,
              truth_path: str | Path) -> dict:
    """Precision, recall, F1, IoU (and the rest of ``dsqnet.metrics``) of the change class."""
    truth_path = Path(truth_path)
    if not truth_path.is_file():
        raise FileNotFoundError(f"truth {truth_path} does not exist; give GeoParquet polygons or a raster of true change")
    truth = (gpd.read_parquet(truth_path).to_crs(crs) if truth_path.suffix in (".parquet", ".geoparquet")
             else truth_path)
    probability = store.probability()
    matrix = ConfusionMatrix()
    for block in blocks:
        classes = change_classes(np.asarray(probability[block.top:block.bottom, block.left:block.right]), threshold)
        label = truth_on_block(truth, block, transform, crs)
        label[classes == NOT_OBSERVED] = 255  # not observed: neither right nor wrong
        matrix.update(np.where(classes == NOT_OBSERVED, 0, classes), label)
    scores = matrix.scores()
    return {"truth": str(truth_path), "precision": scores["precision"], "recall": scores["recall"],
            "f1": scores["f1"], "iou": scores["iou"], "kappa": scores.get("kappa"),
            "pixels_scored": int(matrix.counts.sum())}
