"""The whole scene's outputs, put together from the shares each block made as it was stitched.

``per_block.BlockOutputs`` keeps every block's tiles, polygon pieces and preview samples; the
functions here assemble them into ``change_prob.tif``/``change.tif``, the change polygons and
``preview.png``, making any share that is missing first.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely
from PIL import Image, ImageDraw

from flows.blocks.lattice import Block
from flows.blocks.store import ProbabilityStore
from flows.outputs.cog import assemble_cog
from flows.outputs.per_block import BlockOutputs
from flows.outputs.polygons import _count_seam_holes, dissolve
from flows.outputs.preview import preview_step
from flows.outputs.rasters import PROBABILITY, ChangeCounts, change_layer


def write_change_rasters(outputs: BlockOutputs, blocks: list[Block], folder: Path) -> ChangeCounts:
    """``change_prob.tif`` and ``change.tif`` in ``folder``, both COGs on the scenes' grid, assembled
    from the blocks' tiles (made first where missing), the two at once."""
    outputs.make_missing(blocks)
    levels, work = outputs.levels, Path(outputs.folder)
    with ThreadPoolExecutor(2) as assemblies:  # GDAL and file copies work without the GIL
        done = [assemblies.submit(assemble_cog, folder / "change_prob.tif", levels, PROBABILITY,
                                  outputs.raster_files("prob", blocks), outputs.crs, outputs.affine, work),
                assemblies.submit(assemble_cog, folder / "change.tif", levels, change_layer(outputs.threshold),
                                  outputs.raster_files("change", blocks), outputs.crs, outputs.affine, work)]
        for assembly in done:
            assembly.result()
    return outputs.counts(blocks)


def change_polygons(outputs: BlockOutputs, blocks: list[Block]) -> gpd.GeoDataFrame:
    """One row per changed region of the whole scene, largest first, from the blocks' pieces (made
    first where missing: flows/outputs/per_block.py)."""
    outputs.make_missing(blocks)
    transform, min_area_m2 = outputs.affine, outputs.min_area_m2
    pixel_area = abs(transform.a * transform.e)
    changes = [p for p in dissolve(outputs.pieces(blocks)) if p.pixels * pixel_area >= min_area_m2]
    _count_seam_holes([c for c in changes if c.seam_holes], ProbabilityStore(outputs.store).probability(), transform)
    geometries = np.empty(len(changes), dtype=object)
    geometries[:] = [p.geometry for p in changes]
    pixels, prob_sum, prob_max, outline_pixels, outline_observed = (
        np.array([getattr(p, name) for p in changes], dtype=np.float64).reshape(-1) for name in
        ("pixels", "prob_sum", "prob_max", "outline_pixels", "outline_observed"))
    area, centroids = shapely.area(geometries), shapely.centroid(geometries)
    order = np.lexsort((shapely.get_x(centroids), -shapely.get_y(centroids), -area))  # largest, then north-west first
    frame = gpd.GeoDataFrame({
        "area_m2": area[order],
        "perimeter_m": shapely.length(geometries[order]),
        "prob_mean": (prob_sum / np.maximum(pixels, 1))[order],
        "prob_max": prob_max[order],
        "observed_fraction": (outline_observed / np.maximum(outline_pixels, 1))[order],
    }, geometry=geometries[order], crs=outputs.crs)
    return frame.reset_index(drop=True)


def write_preview(outputs: BlockOutputs, blocks: list[Block], labels: tuple[str, str], out: Path) -> Path:
    """The blocks' samples pasted into three panels, titled with the two dates. zlib's fastest level:
    the picture comes after the last block, and ``optimize`` took 0.36 s of CPU for 1758 x 586 px of
    tiled LEVIR-CD imagery against 0.04 s, for a file 12 % smaller (bench/HISTORY.md, stop 31)."""
    step = preview_step(outputs.shape)
    rows, cols = (math.ceil(n / step) for n in outputs.shape)
    panels = np.zeros((3, rows, cols, 3), np.uint8)
    for block in blocks:
        part = np.load(outputs.path("preview", block))
        row, col = math.ceil(block.top / step), math.ceil(block.left / step)
        panels[:, row:row + part.shape[1], col:col + part.shape[2]] = part
    titles = [f"before {labels[0]}", f"after {labels[1]}", "change (red), not observed (grey)"]
    gap, header = 8, 18
    canvas = Image.new("RGB", (3 * cols + 2 * gap, rows + header), "white")
    draw = ImageDraw.Draw(canvas)
    for k, (panel, title) in enumerate(zip(panels, titles)):
        canvas.paste(Image.fromarray(panel), (k * (cols + gap), header))
        draw.text((k * (cols + gap) + 2, 3), title, fill="black")
    canvas.save(out, compress_level=1)
    return out
