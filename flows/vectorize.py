"""Change polygons from the probability mosaic, block by block, dissolved across block boundaries.

Each block's changed pixels (probability >= threshold, observed) become polygons with
``rasterio.features.shapes`` (4-connected, so diagonal neighbours are separate changes, as in the
raster). Per-polygon sums (probability, pixels, observed pixels under the outline) are taken in the
same block pass. Polygons that reach a block's inner edge may continue in the next block: those are
unioned, their pieces' sums added, and the rest are kept as they are. Memory is a few blocks at a
time (``BLOCKS_AT_ONCE``), whatever the scene.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import geopandas as gpd
import numpy as np
import rasterio.features
import shapely
from affine import Affine
from shapely.geometry import Polygon, shape

from .probability_store import ProbabilityStore
from .tiling import Block

# Blocks polygonised at once, in threads (GDAL and GEOS release the GIL): more cores go faster, but
# each block in flight holds ~8 arrays of its size, so memory is capped by this, not by the cores.
BLOCKS_AT_ONCE = 4


@dataclass
class Piece:
    """A polygon of one block, with the sums its statistics are built from."""

    geometry: Polygon
    pixels: int
    prob_sum: float
    prob_max: float
    outline_pixels: int  # pixels under the polygon's outer ring, holes included
    outline_observed: int  # of those, observed in both dates
    at_seam: bool

    def add(self, other: "Piece") -> None:
        self.pixels += other.pixels
        self.prob_sum += other.prob_sum
        self.prob_max = max(self.prob_max, other.prob_max)
        self.outline_pixels += other.outline_pixels
        self.outline_observed += other.outline_observed


def block_pieces(probability: np.ndarray, block: Block, transform: Affine, scene_shape: tuple[int, int],
                 threshold: float) -> list[Piece]:
    """The changed regions of one block as polygons in the grid's CRS, with their sums."""
    observed = ~np.isnan(probability)
    changed = observed & (probability >= threshold)
    if not changed.any():
        return []
    local = transform * Affine.translation(block.left, block.top)
    polygons = [shape(geom) for geom, _ in rasterio.features.shapes(
        changed.astype(np.uint8), mask=changed, transform=local, connectivity=4)]
    labels = rasterio.features.rasterize(
        ((p, i + 1) for i, p in enumerate(polygons)), out_shape=changed.shape, transform=local, dtype=np.int32)
    outlines = rasterio.features.rasterize(
        ((Polygon(p.exterior), i + 1) for i, p in enumerate(polygons)), out_shape=changed.shape,
        transform=local, dtype=np.int32)
    n = len(polygons) + 1
    prob = np.where(changed, probability, 0.0).astype(np.float64)  # ufunc.at is slow when it must cast
    pixels = np.bincount(labels.ravel(), minlength=n)
    prob_sum = np.bincount(labels.ravel(), weights=prob.ravel(), minlength=n)
    prob_max = np.zeros(n)
    np.maximum.at(prob_max, labels.ravel(), prob.ravel())
    outline_pixels = np.bincount(outlines.ravel(), minlength=n)
    outline_observed = np.bincount(outlines.ravel(), weights=observed.ravel(), minlength=n)
    seams = _inner_edges(block, scene_shape)
    return [
        Piece(p, int(pixels[i]), float(prob_sum[i]), float(prob_max[i]), int(outline_pixels[i]),
              int(outline_observed[i]), _at_seam(labels, i, seams))
        for i, p in enumerate(polygons, start=1)
    ]


def _inner_edges(block: Block, scene_shape: tuple[int, int]) -> dict[str, bool]:
    """Which sides of the block border another block (only there can a change continue)."""
    height, width = scene_shape
    return {"top": block.top > 0, "bottom": block.bottom < height, "left": block.left > 0, "right": block.right < width}


def _at_seam(labels: np.ndarray, label: int, seams: dict[str, bool]) -> bool:
    edges = {"top": labels[0], "bottom": labels[-1], "left": labels[:, 0], "right": labels[:, -1]}
    return any(seams[side] and bool((edges[side] == label).any()) for side in edges)


def dissolve(pieces: Iterable[Piece]) -> list[Piece]:
    """Union the pieces that meet at block seams; every other piece is already a whole change.

    Only the outer rings are unioned, and each piece's holes are put back afterwards: a hole lies
    inside its own block and no other seam piece can reach into it, so it stays a hole of the
    merged change. Unioning rings without their holes is what makes this fast on noisy maps
    (measured on a random-weight map: 7.1 s -> 3.9 s for 320 seam pieces with 4,300 holes).
    """
    whole, at_seam = [], []
    for piece in pieces:
        (at_seam if piece.at_seam else whole).append(piece)
    if not at_seam:
        return whole
    merged = shapely.union_all([Polygon(p.geometry.exterior) for p in at_seam])
    components = list(getattr(merged, "geoms", [merged]))
    tree = shapely.STRtree(components)
    totals: dict[int, Piece] = {}
    holes: dict[int, list] = {}
    for piece in at_seam:
        k = int(tree.query(piece.geometry.representative_point(), predicate="intersects")[0])
        holes.setdefault(k, []).extend(piece.geometry.interiors)
        if k in totals:
            totals[k].add(piece)
        else:
            totals[k] = Piece(components[k], piece.pixels, piece.prob_sum, piece.prob_max, piece.outline_pixels,
                              piece.outline_observed, at_seam=False)
    for k, total in totals.items():
        total.geometry = Polygon(components[k].exterior, [*components[k].interiors, *holes[k]])
    return whole + [totals[k] for k in sorted(totals)]


def change_polygons(store: ProbabilityStore, blocks: list[Block], transform: Affine, crs, threshold: float,
                    min_area_m2: float) -> gpd.GeoDataFrame:
    """One row per changed region of the whole scene, largest first."""
    probability = store.probability()
    scene_shape = probability.shape

    def pieces_of(block: Block) -> list[Piece]:
        values = np.asarray(probability[block.top:block.bottom, block.left:block.right])
        return block_pieces(values, block, transform, scene_shape, threshold)

    with ThreadPoolExecutor(max_workers=max(1, min(len(blocks), os.cpu_count() or 1, BLOCKS_AT_ONCE))) as pool:
        pieces = [piece for found in pool.map(pieces_of, blocks) for piece in found]
    changes = [p for p in dissolve(pieces) if p.geometry.area >= min_area_m2]
    frame = gpd.GeoDataFrame({
        "area_m2": [p.geometry.area for p in changes],
        "perimeter_m": [p.geometry.length for p in changes],
        "prob_mean": [p.prob_sum / max(p.pixels, 1) for p in changes],
        "prob_max": [p.prob_max for p in changes],
        "observed_fraction": [p.outline_observed / max(p.outline_pixels, 1) for p in changes],
    }, geometry=[p.geometry for p in changes], crs=crs)
    if len(frame):
        centroids = frame.geometry.centroid
        frame = frame.assign(_x=centroids.x, _y=centroids.y).sort_values(
            ["area_m2", "_y", "_x"], ascending=[False, False, True]).drop(columns=["_x", "_y"])
    return frame.reset_index(drop=True)
