"""Encoding a block's COG tiles: GDAL's encoder against ``flows/outputs/tile_encoding.py``.

A block's full-resolution tiles of both COGs, 2048² in 512-px tiles, encoded the way each writer
does it: GDAL through rasterio (``MemoryFile``, DEFLATE, the layer's predictor and level; GDAL
deflates with libdeflate) and this project's encoder (the same predictor in numpy, then ISA-L at
level 1). CPU seconds of this process (best of
``--repeats``) and the encoded size, on three probability maps:

    noisy     bench/outputs.py's map: 64-px fields plus per-pixel noise (the worst case for deflate)
    smooth    blurred noise through a logistic, as a network's probabilities are
    sparse    mostly zero, with changed fields of one value (bench/pipeline.py's stand-in network)

and on the classes of the noisy map thresholded at 0.5.

    python -m bench.tile_encoding
"""

from __future__ import annotations

import argparse
import json
import resource
from collections.abc import Callable

import numpy as np
from affine import Affine
from rasterio.io import MemoryFile
from scipy.ndimage import gaussian_filter

from bench.outputs import CRS, noisy_map
from flows.outputs.classes import change_classes
from flows.outputs.cog import TILE, Layer
from flows.outputs.rasters import PROBABILITY, change_layer
from flows.outputs.tile_encoding import encode_tiles

SIZE = 2048
TRANSFORM = Affine(0.5, 0, 500000.0, 0, -0.5, 5400000.0)
GDAL_LEVEL = {PROBABILITY.dtype: 1, "uint8": 6}  # the levels GDAL was given before this module encoded tiles


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def probability_maps(size: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    smooth = 1 / (1 + np.exp(-40 * gaussian_filter(rng.normal(size=(size, size)), 8)))
    sparse = np.zeros((size, size), np.float32)
    fields = rng.random((size // 64, size // 64)) < 0.05
    sparse[np.kron(fields, np.ones((64, 64), bool))] = 0.93
    return {"noisy": noisy_map(size), "smooth": smooth.astype(np.float32), "sparse": sparse}


def by_gdal(pixels: np.ndarray, layer: Layer) -> int:
    profile = {"driver": "GTiff", "height": pixels.shape[0], "width": pixels.shape[1], "count": 1,
               "dtype": layer.dtype, "nodata": layer.nodata, "crs": CRS, "transform": TRANSFORM, "tiled": True,
               "blockxsize": TILE, "blockysize": TILE, "compress": "deflate", "predictor": layer.predictor,
               "zlevel": GDAL_LEVEL[layer.dtype]}
    with MemoryFile(ext=".tif") as memory:
        with memory.open(**profile) as tif:
            tif.write(pixels, 1)
        return len(memory.read())


def by_this_module(pixels: np.ndarray, layer: Layer) -> int:
    return sum(map(len, encode_tiles(pixels, TILE, layer.predictor, layer.nodata)))


def best_of(repeats: int, encode: Callable[[np.ndarray, Layer], int], pixels: np.ndarray, layer: Layer):
    seconds = []
    for _ in range(repeats):
        started = cpu_seconds()
        size = encode(pixels, layer)
        seconds.append(cpu_seconds() - started)
    return min(seconds), size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cases = [(name, pixels, PROBABILITY) for name, pixels in probability_maps(SIZE).items()]
    cases.append(("classes", change_classes(cases[0][1], 0.5), change_layer(0.5)))
    for name, pixels, layer in cases:
        gdal_s, gdal_bytes = best_of(args.repeats, by_gdal, pixels, layer)
        ours_s, our_bytes = best_of(args.repeats, by_this_module, pixels, layer)
        row = {"map": name, "dtype": layer.dtype, "gdal_ms": round(1000 * gdal_s, 1),
               "this_module_ms": round(1000 * ours_s, 1), "gdal_mb": round(gdal_bytes / 1e6, 3),
               "this_module_mb": round(our_bytes / 1e6, 3), "raw_mb": round(pixels.nbytes / 1e6, 3)}
        print(json.dumps(row))
        print(f"{name:8s} {layer.dtype:8s} GDAL {row['gdal_ms']:6.1f} ms {row['gdal_mb']:6.2f} MB   "
              f"here {row['this_module_ms']:6.1f} ms {row['this_module_mb']:6.2f} MB   (raw {row['raw_mb']:.2f} MB)")


if __name__ == "__main__":
    main()
