"""Is GDAL's COG driver fast enough for the pipeline's tail? Our tile assembly against the library.

The detect flow must finish soon after its last block: on one H200 the network covers an 8192²
region in seconds, and the goal is the whole run within 1.3x the network's time. Whatever is
written after the last block counts in full. This measures, for the same probability map (the
noisy one of ``bench/outputs.py``) and the same encoding (512-px tiles, DEFLATE, the same
overview rules), the two ways to make ``change_prob.tif`` and ``change.tif``:

- ``gdal_cog_s``: GDAL's COG driver (rasterio, ``driver="COG"``) writing both files from the whole
  mosaic once it is complete, overviews included: all of it after the last block.
- ``assembly_after_last_block_s``: the pipeline's way (``flows/outputs/cog.py``): every block
  encodes its own tiles while the other blocks run (``per_block_total_s``, spread over the run on
  the output processes), and after the last block only the assembly is left.

Both files are checked to hold the same pixels, and each is validated with rio-cogeo.

    python -m bench.cog_writers --sizes 4096 8192
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rio_cogeo.cogeo import cog_validate

from bench.outputs import CRS, grid, noisy_map
from flows.blocks.lattice import plan_blocks
from flows.blocks.store import ProbabilityStore
from flows.outputs.assemble import write_change_rasters
from flows.outputs.classes import change_classes
from flows.outputs.per_block import BlockOutputs
from flows.outputs.rasters import PALETTE


def gdal_cogs(probability: np.ndarray, transform, folder: Path) -> float:
    """Both COGs by GDAL's COG driver from the whole mosaic; seconds."""
    started = time.perf_counter()
    common = dict(driver="COG", height=probability.shape[0], width=probability.shape[1], count=1, crs=CRS,
                  transform=transform, blocksize=512, compress="DEFLATE", bigtiff="IF_SAFER", num_threads=2)
    with rasterio.open(folder / "change_prob.tif", "w", dtype="float32", nodata=np.nan, predictor=3, level=1,
                       overview_resampling="average", **common) as dst:
        dst.write(probability[None])
    with rasterio.open(folder / "change.tif", "w", dtype="uint8", nodata=255, overview_resampling="mode",
                       **common) as dst:
        dst.write(change_classes(probability, 0.5)[None])
        dst.write_colormap(1, PALETTE)
    return time.perf_counter() - started


def run(size: int, block_size: int, work: Path) -> dict:
    probability = noisy_map(size)
    blocks = plan_blocks(size, size, block_size)
    scenes = grid(size)
    store = ProbabilityStore.prepare(work / f"prob_{size}.zarr", scenes, (blocks[-1].row + 1, blocks[-1].col + 1),
                                     f"cog-{size}")
    for block in blocks:
        store.write_block(block, probability[block.top:block.bottom, block.left:block.right])
    transform = scenes.rio.transform()
    ours, gdal = work / f"ours_{size}", work / f"gdal_{size}"
    ours.mkdir()
    gdal.mkdir()

    outputs = BlockOutputs.prepare(store, CRS, transform, block_size, threshold=0.5, min_area_m2=10.0)
    started = time.perf_counter()
    outputs.make_missing(blocks)  # in a run: each block's share while the other blocks are inferred
    per_block = time.perf_counter() - started
    started = time.perf_counter()
    write_change_rasters(outputs, blocks, ours)
    assembly = time.perf_counter() - started
    library = gdal_cogs(probability, transform, gdal)

    same = True
    for name in ("change_prob.tif", "change.tif"):
        with rasterio.open(ours / name) as a, rasterio.open(gdal / name) as b:
            same &= np.array_equal(a.read(1), b.read(1), equal_nan=True)
        assert cog_validate(str(ours / name))[0] and cog_validate(str(gdal / name))[0], name
    return {"size": size, "blocks": len(blocks), "per_block_total_s": round(per_block, 2),
            "assembly_after_last_block_s": round(assembly, 2), "gdal_cog_s": round(library, 2),
            "same_full_resolution_pixels": bool(same)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192])
    parser.add_argument("--block-size", type=int, default=2048)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dsqnet-bench-cog-") as tmp:
        for size in args.sizes:
            print(json.dumps(run(size, args.block_size, Path(tmp))), flush=True)


if __name__ == "__main__":
    main()
