"""How long do the outputs take when the change map is noisy?

A model that does not fit a region (or random weights) speckles the map with tens of thousands of
small regions, many of them holes in larger ones. The outputs must stay cheap then too. This writes
such a map into a real ``change_prob.zarr`` (the scenes' grid, block done-markers and all), then
times the steps of ``detect-changes`` that read it, one after another in this process: one block's
share alone, split into its tiles and its polygon pieces (what a child process spends on a block
while blocks run); each block's share of the outputs (its tiles of both COGs and its polygon pieces,
which a run makes while the other blocks are still inferred; here all blocks at once, in threads),
then what is left after the last block: the two COGs assembled from the blocks' tiles, and the
pieces dissolved across the seams; and the process's peak resident memory so far (sizes run smallest
first).

The map: 64-px fields of random level plus per-pixel noise, thresholded at 0.5, so about half the
pixels change, in regions of every size; 0.2 % of the pixels are unobserved.

    python bench/outputs.py                       # 2048^2 and 8192^2, blocks of 2048, minimum area 10 m2
    python bench/outputs.py --sizes 4096 --min-area 0
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import xarray as xr
from affine import Affine

from flows.outputs.assemble import change_polygons, write_change_rasters
from flows.outputs.per_block import BlockOutputs
from flows.outputs.manifest import peak_rss_gb
from flows.blocks.store import ProbabilityStore
from flows.outputs.rasters import write_block_rasters
from flows.blocks.lattice import plan_blocks
from flows.outputs.polygons import block_pieces

CRS, RESOLUTION, ORIGIN = "EPSG:32633", 0.5, (500000.0, 5400000.0)


def noisy_map(size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    fields = rng.random((size // 64 + 1, size // 64 + 1), np.float32)
    level = np.repeat(np.repeat(fields, 64, axis=0), 64, axis=1)[:size, :size]
    probability = level * 0.6 + rng.random((size, size), np.float32) * 0.4
    probability[rng.random((size, size)) < 0.002] = np.nan
    return probability


def grid(size: int) -> xr.Dataset:
    transform = Affine(RESOLUTION, 0, ORIGIN[0], 0, -RESOLUTION, ORIGIN[1])
    centres = np.arange(size) + 0.5
    coords = {"y": ORIGIN[1] - RESOLUTION * centres, "x": ORIGIN[0] + RESOLUTION * centres}
    ds = xr.Dataset({"valid": (("y", "x"), np.zeros((size, size), bool))}, coords=coords)
    return ds.rio.write_crs(CRS).rio.write_transform(transform)


def run(size: int, block_size: int, min_area: float, work: Path) -> dict:
    probability = noisy_map(size)
    blocks = plan_blocks(size, size, block_size)
    scenes = grid(size)
    block_grid = (blocks[-1].row + 1, blocks[-1].col + 1)
    store = ProbabilityStore.prepare(work / f"change_prob_{size}.zarr", scenes, block_grid, f"noisy-{size}")
    for block in blocks:
        store.write_block(block, probability[block.top:block.bottom, block.left:block.right])
    transform = scenes.rio.transform()
    folder = work / f"out_{size}"
    folder.mkdir()

    outputs = BlockOutputs.prepare(store, CRS, transform, block_size, threshold=0.5, min_area_m2=min_area)
    one = blocks[len(blocks) // 2]  # one block's share alone, split: what a child process spends on it
    pixels = probability[one.top:one.bottom, one.left:one.right]
    started = time.perf_counter()
    write_block_rasters(pixels, one, outputs.levels, CRS, transform, 0.5, work / "one_prob.tif", work / "one_change.tif")
    one_tiles = time.perf_counter() - started
    started = time.perf_counter()
    block_pieces(pixels, one, transform, (size, size), 0.5, min_area)
    one_pieces = time.perf_counter() - started
    started = time.perf_counter()
    outputs.make_missing(blocks)
    per_block = time.perf_counter() - started
    started = time.perf_counter()
    write_change_rasters(outputs, blocks, folder)
    rasters = time.perf_counter() - started
    started = time.perf_counter()
    polygons = change_polygons(outputs, blocks)
    vectors = time.perf_counter() - started
    return {"size": size, "blocks": len(blocks), "min_area_m2": min_area, "one_block_tiles_s": round(one_tiles, 2),
            "one_block_pieces_s": round(one_pieces, 2), "block_outputs_s": round(per_block, 2),
            "cogs_s": round(rasters, 2), "polygons_s": round(vectors, 2), "polygons": len(polygons),
            "holes": int(sum(len(g.interiors) for g in polygons.geometry)),
            "peak_rss_gb_so_far": peak_rss_gb()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--block-size", type=int, default=2048)
    parser.add_argument("--min-area", type=float, default=10.0, help="smallest polygon kept, m2 (detect's default)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dsqnet-bench-outputs-") as tmp:
        for size in args.sizes:
            print(json.dumps(run(size, args.block_size, args.min_area, Path(tmp))), flush=True)


if __name__ == "__main__":
    main()
