"""Each block's share of the outputs, made as soon as the block is stitched, while the others still run.

At GPU speed the outputs cost as much as the network: on an H200 an 8192² run spent 12.3 s on its
blocks and then 11.5 s on the COGs and polygons, which started only after the last block. So each
stitched block now writes its share, in background threads of the flow's process, into a folder
beside the store (``change_prob_outputs/<key>/``)::

    prob/<block>.tif, change/<block>.tif   its pixels as tiled GeoTIFFs; the COGs are copied from a VRT of them
    pieces/<block>.parquet                 its change polygons with their sums (flows/vectorize.block_pieces)
    <block>.json                           written last, with its pixel counts: the block's done marker

and the finishing steps only assemble: two COG copies, and the dissolve of the polygons that meet
at seams. A block without its marker (stitched by a run that was killed, say) gets its files then.
The key names the store's inputs, the threshold and the minimum area, so files made for other
inputs are never mixed in; a block counts as done only once its marker, written aside and renamed, is there.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
from affine import Affine
from rasterio.errors import RasterioIOError

from .probability_store import ProbabilityStore
from .rasters import ChangeCounts, write_block_rasters
from .tiling import Block
from .vectorize import BLOCKS_AT_ONCE, Piece, block_pieces

PIECE_COLUMNS = ("pixels", "prob_sum", "prob_max", "outline_pixels", "outline_observed", "at_seam")


@dataclass(frozen=True)
class BlockOutputs:
    """Where each block's share of the outputs goes, and what it is made with.

    Plain fields only, so that it travels as a flow parameter.
    """

    store: str
    folder: str
    shape: tuple[int, int]
    crs: str  # WKT
    transform: tuple[float, ...]  # affine coefficients a, b, c, d, e, f
    threshold: float
    min_area_m2: float

    @classmethod
    def prepare(cls, store: ProbabilityStore, crs: str, transform: Affine, threshold: float,
                min_area_m2: float) -> "BlockOutputs":
        """The outputs folder for this store and these parameters; folders for other ones are removed."""
        key = f"{store.key() or 'unkeyed'}-t{threshold:g}-a{min_area_m2:g}"
        parent = store.path.with_name(f"{store.path.stem}_outputs")
        if parent.is_dir():
            for other in parent.iterdir():
                if other.name != key:
                    shutil.rmtree(other, ignore_errors=True)
        outputs = cls(str(store.path), str(parent / key), tuple(store.probability().shape), crs,
                      tuple(transform)[:6], threshold, min_area_m2)
        for kind in ("prob", "change", "pieces"):
            (parent / key / kind).mkdir(parents=True, exist_ok=True)
        return outputs

    @property
    def affine(self) -> Affine:
        return Affine(*self.transform)

    def path(self, kind: str, block: Block) -> Path:
        suffix = {"prob": "tif", "change": "tif", "pieces": "parquet", "marker": "json"}[kind]
        folder = Path(self.folder) if kind == "marker" else Path(self.folder) / kind
        return folder / f"{block.name}.{suffix}"

    # ---------------------------------------------------------------------------------------------
    # Making them

    def write(self, block: Block) -> None:
        """The block's rasters, polygons and marker, from its stitched probabilities in the store."""
        probability = np.asarray(ProbabilityStore(self.store).probability()[
            block.top:block.bottom, block.left:block.right])
        for kind in ("marker", "prob", "change", "pieces"):  # GDAL will not write over a TIFF that a kill cut off
            self.path(kind, block).unlink(missing_ok=True)
        try:
            observed, changed = write_block_rasters(probability, block, self.crs, self.affine, self.threshold,
                                                    self.path("prob", block), self.path("change", block))
        except RasterioIOError as err:
            raise _disk_full_or(err, Path(self.folder), probability.nbytes) from err
        _write_pieces(block_pieces(probability, block, self.affine, self.shape, self.threshold, self.min_area_m2),
                      self.path("pieces", block))
        # last, and whole or not at all: a rerun redoes a block whose marker is missing, whatever else is there
        marker = self.path("marker", block)
        tmp = marker.with_name(f".{marker.name}.{uuid.uuid4().hex[:8]}")
        tmp.write_text(json.dumps({"block": block.name, "observed": observed, "changed": changed}))
        os.replace(tmp, marker)

    def done(self) -> set[str]:
        """Names of the blocks whose files are all there."""
        return {p.stem for p in Path(self.folder).glob("block-*.json")}

    def complete(self, blocks: list[Block]) -> int:
        """Make the files of every block that lacks them, on all cores (nothing else runs by then);
        returns how many blocks that was."""
        done = self.done()
        missing = [b for b in blocks if b.name not in done]
        if missing:
            with BackgroundWriter(self, max(1, min(len(missing), BLOCKS_AT_ONCE, os.cpu_count() or 1))) as writer:
                for block in missing:
                    writer.submit(block)
        return len(missing)

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    # ---------------------------------------------------------------------------------------------
    # Reading them back

    def counts(self, blocks: list[Block]) -> ChangeCounts:
        markers = [json.loads(self.path("marker", b).read_text()) for b in blocks]
        return ChangeCounts(sum(m["observed"] for m in markers), sum(m["changed"] for m in markers),
                            abs(self.transform[0] * self.transform[4]))

    def pieces(self, blocks: list[Block]) -> list[Piece]:
        """Every block's pieces, in plan order (the dissolve adds their sums in that order)."""
        return [piece for block in blocks for piece in _read_pieces(self.path("pieces", block))]

    def raster_files(self, kind: str, blocks: list[Block]) -> list[tuple[Block, Path]]:
        return [(block, self.path(kind, block)) for block in blocks]


def default_threads(blocks: int) -> int:
    """Threads for block outputs while blocks run: a quarter of the cores, at most ``BLOCKS_AT_ONCE``.

    While blocks run, the cores belong to the network first (all of them on a CPU; on a GPU machine,
    the Python thread that feeds the card), and each block in flight holds a few arrays of its size.
    """
    return max(1, min(blocks, BLOCKS_AT_ONCE, (os.cpu_count() or 1) // 4))


class BackgroundWriter:
    """Writes blocks' outputs in a few threads; leaving the ``with`` waits for all and raises the first error."""

    def __init__(self, outputs: BlockOutputs, threads: int) -> None:
        self.outputs = outputs
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="block-outputs")
        self.futures: list[Future] = []

    def __enter__(self) -> "BackgroundWriter":
        return self

    def submit(self, block: Block) -> None:
        self.futures.append(self.pool.submit(self.outputs.write, block))

    def __exit__(self, kind, value, traceback) -> None:
        self.pool.shutdown(wait=True, cancel_futures=kind is not None)
        if kind is None:
            for future in self.futures:
                future.result()  # the first failure (a full disk, say) surfaces here


def _disk_full_or(err: RasterioIOError, folder: Path, needed: int) -> OSError:
    """GDAL says only "Write failed" when the disk fills (libtiff prints the reason to stderr), so a
    failed write with less room left than the block needed is reported as the full disk it is."""
    if shutil.disk_usage(folder).free < needed:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder))
    return err


def _write_pieces(pieces: list[Piece], path: Path) -> None:
    table = pa.table({
        "geometry": pa.array(shapely.to_wkb([p.geometry for p in pieces]) if pieces else [], pa.binary()),
        **{name: [getattr(p, name) for p in pieces] for name in PIECE_COLUMNS},
    }, schema=pa.schema([("geometry", pa.binary()), ("pixels", pa.int64()), ("prob_sum", pa.float64()),
                         ("prob_max", pa.float64()), ("outline_pixels", pa.int64()),
                         ("outline_observed", pa.int64()), ("at_seam", pa.bool_())]))
    pq.write_table(table, path)


def _read_pieces(path: Path) -> list[Piece]:
    columns = pq.read_table(path).to_pydict()
    geometries = shapely.from_wkb(columns["geometry"])
    return [Piece(geometry, *values) for geometry, *values in zip(geometries, *(columns[c] for c in PIECE_COLUMNS))]

