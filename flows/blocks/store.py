"""``change_prob.zarr``: the seamless probability mosaic that blocks write into, and the resume point.

The store holds ``probability`` (y, x) float32 on the scenes' grid (NaN = not observed in both dates)
and ``done`` (block_row, block_col) int8: a block's marker is set only after its pixels are written,
each marker in a chunk of its own, so no two writers share a chunk. The store records the hash of
everything its pixels depend on (scenes, model, windows, precision, blocks, code version); a rerun
with the same hash keeps what is done, any other store is replaced.

Beside it, ``change_prob_window_sums/`` holds each block's window sums (flows/blocks/infer.py) as
one ``.npy`` file per block, written aside and renamed: a file that exists is complete, so the
files are the resume point of inference, and the ``done`` markers that of stitching. The sums are
removed once the store is complete.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import zarr
from zarr.codecs import BloscCodec

if TYPE_CHECKING:
    import xarray as xr

from flows.files.atomic import written_aside
from flows.blocks.lattice import Block

CHUNK = 512  # blocks are whole multiples of this, so no two blocks share a chunk
# The probabilities are written once per block while the network runs and read back by the outputs
# and by evaluation: a work store (the COGs are the archive). LZ4 after a byte shuffle takes less CPU
# than zarr's default zstd to write and to read, and makes a smaller store of them
# (bench/probability_codec.py; the figures in bench/HISTORY.md, stop 26).
PROBABILITY_CODEC = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
INPUTS = "inputs_hash"
COMPLETE = "complete"


class ProbabilityStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # ---------------------------------------------------------------------------------------------
    @classmethod
    def prepare(cls, path: str | Path, scenes: xr.Dataset, block_grid: tuple[int, int], key: str) -> "ProbabilityStore":
        """The store for ``key``: the existing one (to resume) or a new, empty one."""
        store = cls(path)
        if store.key() == key:
            return store
        with written_aside(store.path) as tmp:
            _template(scenes, block_grid, key).to_zarr(
                str(tmp), mode="w", compute=False, zarr_format=3, consolidated=False,
                encoding={"probability": {"chunks": (CHUNK, CHUNK), "fill_value": np.nan,
                                          "compressors": (PROBABILITY_CODEC,)},
                          "done": {"chunks": (1, 1), "fill_value": 0}},
            )
            shutil.rmtree(store.sums_dir, ignore_errors=True)  # sums of other inputs: never mix them in
        return store

    def key(self) -> str | None:
        try:
            return zarr.open_group(str(self.path), mode="r").attrs.get(INPUTS)
        except Exception:  # missing or not a store
            return None

    @property
    def sums_dir(self) -> Path:
        return self.path.with_name(f"{self.path.stem}_window_sums")

    def write_sums(self, block: Block, sums: np.ndarray | None) -> None:
        """Store a block's window sums (None: it ran no window), atomically."""
        self.sums_dir.mkdir(parents=True, exist_ok=True)
        final = self.sums_dir / f"{block.name}.npy"
        with written_aside(final) as tmp, open(tmp, "wb") as f:
            np.save(f, np.zeros((0, 0), np.float32) if sums is None else sums.astype(np.float32, copy=False))

    def read_sums(self, block: Block) -> np.ndarray | None:
        """A block's window sums (memory-mapped), or None when it ran no window."""
        sums = np.load(self.sums_dir / f"{block.name}.npy", mmap_mode="r", allow_pickle=False)
        return None if sums.size == 0 else sums

    def summed_blocks(self) -> set[tuple[int, int]]:
        if not self.sums_dir.is_dir():
            return set()
        names = (p.stem.split("-") for p in self.sums_dir.glob("block-*-*.npy"))
        return {(int(r), int(c)) for _, r, c in names}

    def clear_sums(self) -> None:
        shutil.rmtree(self.sums_dir, ignore_errors=True)

    @property
    def complete(self) -> bool:
        try:
            return bool(zarr.open_group(str(self.path), mode="r").attrs.get(COMPLETE, False))
        except Exception:  # missing or not a store
            return False

    def reusable_blocks(self) -> int:
        """How many blocks a rerun will not infer again: those with window sums, or all once complete."""
        if self.complete:
            return int(zarr.open_array(str(self.path / "done"), mode="r").size)
        return len(self.summed_blocks())

    def done_blocks(self) -> set[tuple[int, int]]:
        done = np.asarray(zarr.open_array(str(self.path / "done"), mode="r")[:])
        return {(int(r), int(c)) for r, c in zip(*np.nonzero(done))}

    def write_block(self, block: Block, probability: np.ndarray) -> None:
        """Write the block's probabilities, then its done marker: a crash in between leaves it not done."""
        group = zarr.open_group(str(self.path), mode="r+")
        group["probability"][block.top:block.bottom, block.left:block.right] = probability
        group["done"][block.row, block.col] = 1

    def mark_complete(self) -> None:
        zarr.open_group(str(self.path), mode="r+").attrs[COMPLETE] = True

    def probability(self) -> zarr.Array:
        return zarr.open_array(str(self.path / "probability"), mode="r")


def _template(scenes: xr.Dataset, block_grid: tuple[int, int], key: str) -> xr.Dataset:
    # imported here: the block outputs' child processes use this module to read the store, and
    # dask.array, xarray and rioxarray took 1.1 of their 2.0 s of CPU to start (2-core CPU)
    import dask.array as da
    import rioxarray  # noqa: F401  (the .rio accessor)
    import xarray as xr

    height, width = scenes.sizes["y"], scenes.sizes["x"]
    probability = xr.DataArray(
        da.full((height, width), np.nan, dtype=np.float32, chunks=CHUNK), dims=("y", "x"),
        coords={"y": scenes["y"], "x": scenes["x"]},
        attrs={"description": "probability of change; NaN where a date did not observe the pixel"},
    ).rio.write_crs(scenes.rio.crs).rio.write_transform(scenes.rio.transform())
    probability.attrs["grid_mapping"] = "spatial_ref"  # explicit encodings below would drop rioxarray's
    done = xr.DataArray(da.zeros(block_grid, dtype=np.int8, chunks=1), dims=("block_row", "block_col"),
                        attrs={"description": "1 once the block's probabilities are written"})
    return xr.Dataset({"probability": probability, "done": done}, attrs={INPUTS: key, COMPLETE: False})
