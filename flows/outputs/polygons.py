"""Change polygons from the probability mosaic, block by block, dissolved across block boundaries.

Each block's changed pixels (probability >= threshold, observed) are labelled as regions
(4-connected, so diagonal neighbours are separate changes, as in the raster), and each region is
traced into one polygon with ``rasterio.features.shapes``. Per-region sums (probability, pixels,
observed pixels under the outline) are taken from the labels in the same block pass. Polygons that
reach a block's inner edge may continue in the next block: those are unioned, their pieces' sums
added, and the rest are kept as they are. Each block's pieces are made as soon as it is stitched,
a few blocks at a time (``BLOCKS_AT_ONCE``, flows/outputs/per_block.py), so memory does not grow with
the scene. ``bench/outputs.py`` times this on a speckled map.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import rasterio.features
import scipy.ndimage
import shapely
from affine import Affine
from shapely.geometry import Polygon

from flows.blocks.lattice import Block
from flows.outputs.classes import changed_pixels


# Blocks polygonised at once, in threads (flows/outputs/per_block.py): more cores go faster, but each
# block in flight holds several arrays of its size, so memory is capped by this, not by the cores.
BLOCKS_AT_ONCE = 4
# Holes that close across seams are counted from the mosaic in windows of about this many pixels a side.
SEAM_HOLE_WINDOW = 2048


@dataclass
class Piece:
    """A polygon of one block, with the sums its statistics are built from."""

    geometry: Polygon
    pixels: int
    prob_sum: float
    prob_max: float
    outline_pixels: int  # pixels under the polygon's outer ring, holes included
    outline_observed: int  # of those, observed in both dates
    seam_holes: int = 0  # holes that close only across seams, its first interiors: in no piece's sums

    def add(self, other: "Piece") -> None:
        self.pixels += other.pixels
        self.prob_sum += other.prob_sum
        self.prob_max = max(self.prob_max, other.prob_max)
        self.outline_pixels += other.outline_pixels
        self.outline_observed += other.outline_observed


@dataclass
class BlockPieces:
    """A block's pieces, and for each side of the block that borders another block, which piece each
    pixel along that edge belongs to (-1: none). Pieces whose pixels face each other across a seam
    are parts of one change."""

    pieces: list[Piece]
    edges: dict[str, np.ndarray]


def block_pieces(probability: np.ndarray, block: Block, transform: Affine, scene_shape: tuple[int, int],
                 threshold: float, min_area_m2: float = 0.0) -> BlockPieces:
    """The changed regions of one block as polygons in the grid's CRS, with their sums.

    The regions are labelled first (4-connected) and every sum is taken per label in one pass over
    the block; each label then traces to exactly one polygon. A region smaller than ``min_area_m2``
    that does not reach a seam is dropped before it becomes a geometry (its area is its pixels: the
    outlines follow pixel edges), and no polygon is ever rasterised back to find its pixels.
    """
    observed = ~np.isnan(probability)
    changed = observed & changed_pixels(probability, threshold)
    labels, count = label_components(changed)
    edge_labels = _inner_edges(labels, block, scene_shape)
    if count == 0:
        return BlockPieces([], {side: np.full(len(edge), -1, np.int32) for side, edge in edge_labels.items()})
    label, values = labels[changed], probability[changed].astype(np.float64)  # ufunc.at is slow when it must cast
    regions = _Regions(pixels=np.bincount(label, minlength=count + 1),
                       prob_sum=np.bincount(label, weights=values, minlength=count + 1),
                       prob_max=np.zeros(count + 1), at_seam=np.zeros(count + 1, bool))
    np.maximum.at(regions.prob_max, label, values)
    for edge in edge_labels.values():
        regions.at_seam[edge] = True
    pixel_area = abs(transform.a * transform.e)
    keep = regions.at_seam | (regions.pixels * pixel_area >= min_area_m2)
    keep[0] = False

    local = transform * Affine.translation(block.left, block.top)
    traced = list(rasterio.features.shapes(labels, mask=keep[labels], transform=local, connectivity=4))  # kept only
    piece_of_label = np.full(count + 1, -1, np.int32)
    piece_of_label[[int(value) for _, value in traced]] = np.arange(len(traced), dtype=np.int32)
    return BlockPieces(_pieces(traced, regions, _Counter(~observed), local, pixel_area),
                       {side: piece_of_label[edge] for side, edge in edge_labels.items()})


@dataclass(frozen=True)
class _Regions:
    """Per-label sums of a block's changed regions (index 0 is the background)."""

    pixels: np.ndarray
    prob_sum: np.ndarray
    prob_max: np.ndarray
    at_seam: np.ndarray


def _pieces(traced: list, regions: _Regions, unobserved: "_Counter", transform: Affine,
            pixel_area: float) -> list[Piece]:
    pieces = []
    for (_, value), polygon in zip(traced, _polygons([geometry["coordinates"] for geometry, _ in traced])):
        label = int(value)
        outline_pixels = outline_observed = int(regions.pixels[label])
        if polygon.interiors:  # what the holes enclose counts too, observed or not
            outline = Polygon(polygon.exterior)
            outline_pixels = round(outline.area / pixel_area)
            outline_observed = outline_pixels - unobserved.inside(outline, transform)
        pieces.append(Piece(polygon, int(regions.pixels[label]), float(regions.prob_sum[label]),
                            float(regions.prob_max[label]), outline_pixels, outline_observed))
    return pieces


def _polygons(rings_of_each: list[list]) -> np.ndarray:
    """GeoJSON-style polygon coordinates (rings of (x, y)) -> shapely polygons, built in one call.

    One vectorised construction instead of one ``shape()`` per polygon: a noisy block has tens of
    thousands of them.
    """
    if not rings_of_each:
        return np.zeros(0, object)
    points, ring_sizes, ring_owners = [], [], []
    for owner, rings in enumerate(rings_of_each):
        for ring in rings:
            points.extend(ring)
            ring_sizes.append(len(ring))
            ring_owners.append(owner)
    rings = shapely.linearrings(np.asarray(points, float), indices=np.repeat(np.arange(len(ring_sizes)), ring_sizes))
    return shapely.polygons(rings, indices=ring_owners)


FOUR_CONNECTED = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected regions of a boolean mask -> (int32 labels: 0 background, 1..n in row-major order
    of each region's first pixel; n). Polygons and object scores both count regions this way."""
    labels, count = scipy.ndimage.label(np.asarray(mask, dtype=bool), structure=FOUR_CONNECTED, output=np.int32)
    return labels, int(count)


def _inner_edges(labels: np.ndarray, block: Block, scene_shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """The labels along each side of the block that borders another block (only there can a change continue)."""
    height, width = scene_shape
    sides = {"top": (block.top > 0, labels[0]), "bottom": (block.bottom < height, labels[-1]),
             "left": (block.left > 0, labels[:, 0]), "right": (block.right < width, labels[:, -1])}
    return {side: edge.astype(np.intp) for side, (inner, edge) in sides.items() if inner}


class _Counter:
    """Counts the pixels of a mask under a polygon, quickly where the mask is empty around it."""

    def __init__(self, mask: np.ndarray) -> None:
        self.mask = mask

    @cached_property
    def table(self) -> np.ndarray:
        """The summed-area table of the mask, made on first use: most blocks have no polygon with holes."""
        table = np.zeros((self.mask.shape[0] + 1, self.mask.shape[1] + 1), np.int64)
        table[1:, 1:] = self.mask.cumsum(0).cumsum(1)
        return table

    def inside(self, polygon: Polygon, transform: Affine) -> int:
        r0, r1, c0, c1 = (int(edge[0]) for edge in _pixel_windows(polygon, transform, self.mask.shape))
        t = self.table
        if t[r1, c1] - t[r0, c1] - t[r1, c0] + t[r0, c0] == 0:
            return 0
        return _count_under(polygon, self.mask[r0:r1, c0:c1], transform * Affine.translation(c0, r0))


def _pixel_windows(geometries, transform: Affine, shape: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """Rows and columns ``r0, r1, c0, c1`` of a raster under ``transform`` that hold each geometry's
    bounding box (arrays, one entry per geometry), clipped to the raster's ``shape``."""
    left, bottom, right, top = shapely.bounds(geometries).reshape(-1, 4).T
    cols, rows = ~transform * (np.concatenate([left, right]), np.concatenate([top, bottom]))
    cols, rows = np.rint(cols).astype(np.int64).reshape(2, -1), np.rint(rows).astype(np.int64).reshape(2, -1)
    return (np.maximum(rows.min(0), 0), np.minimum(rows.max(0), shape[0]),
            np.maximum(cols.min(0), 0), np.minimum(cols.max(0), shape[1]))


def _count_under(polygon: Polygon, mask: np.ndarray, transform: Affine) -> int:
    """Pixels of ``mask`` (a window with ``transform``) whose centres lie inside ``polygon``."""
    inside = rasterio.features.rasterize([(polygon, 1)], out_shape=mask.shape, transform=transform, dtype=np.uint8)
    return int((mask & (inside == 1)).sum())


def _count_seam_holes(changes: list[Piece], probability, transform: Affine) -> None:
    """Add the pixels of holes that close only across seams to their changes' outline sums.

    In each block such a hole is a notch open to the block's edge, so no piece counted it under its
    outline. Its pixels (and whether they were observed) are counted from the mosaic, a block-sized
    window of holes at a time, so memory stays bounded by the block size whatever the changes span.
    """
    owners = [k for k, change in enumerate(changes) for _ in range(change.seam_holes)]
    if not owners:
        return
    holes = shapely.polygons(np.concatenate([
        shapely.get_interior_ring(change.geometry, np.arange(change.seam_holes)) for change in changes]))
    r0, r1, c0, c1 = _pixel_windows(holes, transform, probability.shape)
    window_of = (r0 // SEAM_HOLE_WINDOW) * (probability.shape[1] // SEAM_HOLE_WINDOW + 1) + c0 // SEAM_HOLE_WINDOW
    for window in np.unique(window_of):
        inside = np.flatnonzero(window_of == window)
        top, bottom, left, right = r0[inside].min(), r1[inside].max(), c0[inside].min(), c1[inside].max()
        burned = rasterio.features.rasterize(
            zip(holes[inside], range(1, len(inside) + 1)), out_shape=(bottom - top, right - left),
            transform=transform * Affine.translation(left, top), dtype=np.int32)
        unobserved = np.isnan(np.asarray(probability[top:bottom, left:right]))
        pixels = np.bincount(burned.ravel(), minlength=len(inside) + 1)[1:]
        missing = np.bincount(burned[unobserved], minlength=len(inside) + 1)[1:]
        for hole, hole_pixels, hole_missing in zip(inside, pixels, missing):
            change = changes[owners[hole]]
            change.outline_pixels += int(hole_pixels)
            change.outline_observed += int(hole_pixels - hole_missing)


def dissolve(blocks: list[tuple[Block, BlockPieces]]) -> list[Piece]:
    """Join the pieces whose pixels face each other across block seams into whole changes.

    Which pieces belong together is read off the blocks' edges (4-connected across a seam, as the
    raster is), so only the pieces of one change are unioned with each other. Only outer
    rings are unioned, and each piece's holes are put back afterwards: a hole lies inside its own
    block, so it stays a hole of the joined change (a hole that closes only across a seam is an
    interior of the unioned rings). Sums are added in plan order, so the result does not depend on
    when the blocks were made.
    """
    offsets = np.cumsum([0] + [len(found.pieces) for _, found in blocks])
    pieces = [piece for _, found in blocks for piece in found.pieces]
    joined = _SeamJoins(len(pieces))
    at = {(block.row, block.col): k for k, (block, _) in enumerate(blocks)}
    for k, (block, found) in enumerate(blocks):
        for side, (drow, dcol), facing in (("right", (0, 1), "left"), ("bottom", (1, 0), "top")):
            j = at.get((block.row + drow, block.col + dcol))
            if j is None or side not in found.edges or facing not in blocks[j][1].edges:
                continue
            mine, theirs = found.edges[side], blocks[j][1].edges[facing]
            meet = (mine >= 0) & (theirs >= 0)
            for a, b in np.unique(np.stack([mine[meet] + offsets[k], theirs[meet] + offsets[j]], axis=1), axis=0):
                joined.union(int(a), int(b))
    roots = joined.roots()
    grouped = (np.bincount(roots, minlength=len(pieces))[roots] > 1).tolist()
    roots = roots.tolist()
    groups: dict[int, list[int]] = {}
    for index in np.flatnonzero(grouped).tolist():
        groups.setdefault(roots[index], []).append(index)
    changes, joins = [], []
    for index, piece in enumerate(pieces):  # in plan order of each change's first piece
        if not grouped[index]:
            changes.append(piece)
            continue
        members = groups[roots[index]]
        if members[0] != index:  # a later piece of a change already made
            continue
        total = Piece(piece.geometry, piece.pixels, piece.prob_sum, piece.prob_max, piece.outline_pixels,
                      piece.outline_observed)
        for other in members[1:]:
            total.add(pieces[other])
        changes.append(total)
        joins.append((total, np.array([pieces[member].geometry for member in members], dtype=object)))
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:  # GEOS works without the GIL
        for (total, _), (geometry, seam_holes) in zip(joins, pool.map(_joined_geometry, [p for _, p in joins])):
            total.geometry, total.seam_holes = geometry, seam_holes
    return changes


def _joined_geometry(parts: np.ndarray) -> tuple[Polygon, int]:
    """The union of pieces that make one change, and how many holes closed across seams: their
    outer rings are unioned (whose holes are those), and their own holes put back after them
    (vectorised: a noisy change has hundreds of thousands of holes)."""
    outline = shapely.union_all(shapely.polygons(shapely.get_exterior_ring(parts)))
    counts = shapely.get_num_interior_rings(parts)
    ring = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)  # 0, 1, ... within each part
    holes = shapely.get_interior_ring(np.repeat(parts, counts), ring)
    seam_holes = shapely.get_interior_ring(outline, np.arange(shapely.get_num_interior_rings(outline)))
    joined = shapely.polygons(shapely.get_exterior_ring(outline), holes=np.concatenate([seam_holes, holes]))
    return joined, len(seam_holes)


class _SeamJoins:
    """Union-find over pieces: which ones are parts of one change."""

    def __init__(self, count: int) -> None:
        self.parent = list(range(count))

    def find(self, index: int) -> int:
        while self.parent[index] != index:
            self.parent[index] = self.parent[self.parent[index]]
            index = self.parent[index]
        return index

    def union(self, a: int, b: int) -> None:
        self.parent[self.find(a)] = self.find(b)

    def roots(self) -> np.ndarray:
        """Every piece's change (the index of its root), found for all at once."""
        parent = np.array(self.parent, dtype=np.int64)
        while not np.array_equal(grand := parent[parent], parent):
            parent = grand
        return parent

