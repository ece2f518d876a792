"""CPU and size of change_prob.zarr's codec: zarr's default (zstd) against the store's (LZ4 after a
byte shuffle), on a real run's probabilities tiled to 8192² and written in blocks of 2048 as the
flow writes them.

    dsqnet detect --out runs                                        # the demo, once
    python bench/probability_codec.py runs/.cache/demo-town_2021-06-14_2023-06-21/change_prob.zarr

Each figure is the best of three: the process's CPU seconds to write and to read the array, and
the bytes on disk.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from flows.blocks.store import PROBABILITY_CODEC

SIDE, BLOCK, CHUNK = 8192, 2048, 512


def tiled(store: Path) -> np.ndarray:
    probability = zarr.open_array(str(store / "probability"), mode="r")[:]
    reps = (SIDE // probability.shape[0] + 1, SIDE // probability.shape[1] + 1)
    return np.ascontiguousarray(np.tile(probability, reps)[:SIDE, :SIDE], dtype=np.float32)


def measure(data: np.ndarray, codec: BloscCodec | None) -> tuple[float, float, int]:
    with tempfile.TemporaryDirectory() as folder:
        extra = {} if codec is None else {"compressors": (codec,)}
        array = zarr.create_array(f"{folder}/p", shape=data.shape, chunks=(CHUNK, CHUNK), dtype="f4",
                                  fill_value=np.nan, **extra)
        started = time.process_time()
        for top in range(0, SIDE, BLOCK):
            for left in range(0, SIDE, BLOCK):
                array[top:top + BLOCK, left:left + BLOCK] = data[top:top + BLOCK, left:left + BLOCK]
        written = time.process_time() - started
        started = time.process_time()
        back = array[:]
        read = time.process_time() - started
        assert np.array_equal(back, data, equal_nan=True)
        size = sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
    return written, read, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", type=Path, help="a run's change_prob.zarr")
    data = tiled(parser.parse_args().store)
    for name, codec in (("zarr default (zstd)", None), ("the store's (LZ4, shuffle)", PROBABILITY_CODEC)):
        written, read, size = min(measure(data, codec) for _ in range(3))
        print(f"{name:28s} write {written:.2f} CPU-s, read {read:.2f} CPU-s, {size / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
