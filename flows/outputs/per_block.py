"""Each block's share of the outputs, made as soon as the block is stitched wherever cores are free.

At GPU speed the outputs cost as much as the network: on an H200 an 8192² run spent 12.3 s on its
blocks and then 11.5 s on the COGs and polygons, which started only after the last block. So each
stitched block now writes its share into a folder beside the store (``change_prob_outputs/<key>/``),
in child processes where the network feeds a GPU from the flow's process (``OutputProcesses``), in
threads where it runs elsewhere, and after the last block where it has this machine's CPU cores::

    prob/<block>.tif, change/<block>.tif   its tiles of both COGs, encoded as the COGs encode them, and
    prob/<block>.x<f>.*, change/...        its tiles or pixels of their overview levels (flows/outputs/cog.py)
    pieces/<block>.parquet                 its change polygons with their sums, and the piece of each pixel
                                           along its inner edges (flows/vectorize.block_pieces)
    preview/<block>.npy                    its pixels of preview.png's three panels (flows/outputs/preview.py)
    <block>.json                           written last, with its pixel counts: the block's done marker

and the finishing steps only assemble: the COGs are written by copying the blocks' tiles behind new
directories, the polygons that meet at seams are dissolved, and the preview's panels are pasted
together. A block without its marker (stitched by a run that was killed, say) gets its files then.
The key names the store's inputs, this code's version, the block size, the threshold and the minimum area, so
files made for other inputs are never mixed in; a block counts as done only once its marker,
written aside and renamed, is there.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
from affine import Affine

from flows.files.atomic import write_text_atomic
from flows.outputs.cog import Levels
from flows.runtime.allocator import child_environment
from flows.runtime.versions import code_version
from flows.outputs.preview import block_panels, preview_step
from flows.blocks.store import ProbabilityStore
from flows.outputs.rasters import ChangeCounts, write_block_rasters
from flows.blocks.lattice import Block
from flows.outputs.polygons import BLOCKS_AT_ONCE, BlockPieces, Piece, block_pieces

OUTPUT_CODE = tuple(Path(__file__).with_name(name) for name in (
    "per_block.py", "classes.py", "rasters.py", "cog.py", "tiff_layout.py", "tile_encoding.py", "polygons.py",
    "preview.py"))
KINDS = ("prob", "change", "pieces", "preview")  # a folder of files each, one file (or more) per block
PIECE_COLUMNS = ("pixels", "prob_sum", "prob_max", "outline_pixels", "outline_observed")


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
    block_size: int
    threshold: float
    min_area_m2: float
    scenes: str | None = None  # scenes.zarr, whose images the preview shows; None: no preview

    @classmethod
    def prepare(cls, store: ProbabilityStore, crs: str, transform: Affine, block_size: int, threshold: float,
                min_area_m2: float, scenes: str | Path | None = None) -> "BlockOutputs":
        """The outputs folder for this store and these parameters; folders for other ones are removed."""
        code = code_version(*OUTPUT_CODE).rsplit("+", 1)[-1]  # files made by other code are not reused either
        key = f"{store.key() or 'unkeyed'}-{code}-b{block_size}-t{threshold:g}-a{min_area_m2:g}"
        parent = store.path.with_name(f"{store.path.stem}_outputs")
        if parent.is_dir():
            for other in parent.iterdir():
                if other.name != key:
                    shutil.rmtree(other, ignore_errors=True)
        outputs = cls(str(store.path), str(parent / key), tuple(store.probability().shape), crs,
                      tuple(transform)[:6], block_size, threshold, min_area_m2, str(scenes) if scenes else None)
        for kind in KINDS:
            (parent / key / kind).mkdir(parents=True, exist_ok=True)
        return outputs

    @property
    def affine(self) -> Affine:
        return Affine(*self.transform)

    @property
    def levels(self) -> Levels:
        return Levels(self.shape, self.block_size)

    def path(self, kind: str, block: Block) -> Path:
        suffix = {"prob": "tif", "change": "tif", "pieces": "parquet", "preview": "npy", "marker": "json"}[kind]
        folder = Path(self.folder) if kind == "marker" else Path(self.folder) / kind
        return folder / f"{block.name}.{suffix}"

    # ---------------------------------------------------------------------------------------------
    # Making them

    def write(self, block: Block) -> None:
        """The block's rasters, polygons and marker, from its stitched probabilities in the store."""
        probability = np.asarray(ProbabilityStore(self.store).probability()[
            block.top:block.bottom, block.left:block.right])
        self.path("marker", block).unlink(missing_ok=True)
        for kind in KINDS:  # GDAL will not write over a TIFF that a kill cut off
            self.path(kind, block).unlink(missing_ok=True)
            for level in self.path(kind, block).parent.glob(f"{block.name}.x*"):
                level.unlink()
        observed, changed = write_block_rasters(probability, block, self.levels, self.crs, self.affine,
                                                self.threshold, self.path("prob", block), self.path("change", block))
        _write_pieces(block_pieces(probability, block, self.affine, self.shape, self.threshold, self.min_area_m2),
                      self.path("pieces", block))
        if self.scenes:
            np.save(self.path("preview", block),
                    block_panels(self.scenes, probability, block, preview_step(self.shape), self.threshold))
        # last, and whole or not at all: a rerun redoes a block whose marker is missing, whatever else is there
        marker = self.path("marker", block)
        write_text_atomic(marker, json.dumps({"block": block.name, "observed": observed, "changed": changed}))

    def done(self) -> set[str]:
        """Names of the blocks whose files are all there."""
        return {p.stem for p in Path(self.folder).glob("block-*.json")}

    def make_missing(self, blocks: list[Block]) -> int:
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

    def pieces(self, blocks: list[Block]) -> list[tuple[Block, BlockPieces]]:
        """Every block's pieces and seam edges, in plan order (the dissolve adds sums in that order)."""
        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:  # parquet and WKB parsing work without the GIL
            return list(zip(blocks, pool.map(_read_pieces, [self.path("pieces", block) for block in blocks])))

    def raster_files(self, kind: str, blocks: list[Block]) -> list[tuple[Block, Path]]:
        return [(block, self.path(kind, block)) for block in blocks]


# Processes that write block outputs while blocks run. On a GPU machine the network is fed from
# Python: its thread holds the GIL to launch kernels, and tracing polygons holds it 70 % of the
# time (rasterio's shapes() builds Python coordinates). Threads of the flow's process therefore
# slowed the network: with a stand-in that does 20 ms of Python work per window (bench/pipeline.py
# --stand-in-gil) the blocks of an 8192² scene took 71 s in threads against 21-30 s with the outputs
# made after them. A child holds 0.2 GB, up to 0.6 GB while it writes a noisy 2048 block, and
# takes a block at a time. An H200 infers a 2048 block every 0.6 s, and a noisy block's outputs
# (random weights') take about 2.5 s of one core of the 2-core CPU (2.0 s its polygons, 0.5 s its
# tiles of both COGs: bench/outputs.py's one_block_*), far less on a clean map (about 0.3 s): keeping
# pace with a noisy map takes four or more, a quarter of a 16-core machine, and with a clean one, one.
# So one child starts first and more only as the blocks waiting need them (``OutputProcesses``);
# those still waiting when the last block is inferred are shared with more (``default_drain``).
OUTPUT_PROCESSES = 4
# What a child costs before its first block: importing numpy, zarr, rasterio, scipy and this code,
# about 1 s of one core (bench/block_steps.py, "outputs: a child's start": 0.96 s on the 2-core CPU).
CHILD_START_S = 1.0


def default_threads(blocks: int) -> int:
    """Threads for block outputs while blocks run elsewhere: a quarter of the cores, at most ``BLOCKS_AT_ONCE``."""
    return max(1, min(blocks, BLOCKS_AT_ONCE, (os.cpu_count() or 1) // 4))


def default_processes(blocks: int) -> int:
    """Processes for block outputs while blocks run: a quarter of the cores, at most
    ``OUTPUT_PROCESSES``; the other cores belong to the network and its feeding first."""
    return max(1, min(blocks, OUTPUT_PROCESSES, (os.cpu_count() or 1) // 4))


def default_drain(blocks: int) -> int:
    """Processes for the blocks still waiting for their outputs once the last block is inferred: as
    many as ``complete`` uses threads, since nothing else runs then."""
    return max(1, min(blocks, BLOCKS_AT_ONCE, os.cpu_count() or 1))


def children_worth_starting(queued: int, room: int, running: int, block_cpu_s: Sequence[float],
                            start_cpu_s: Sequence[float] = ()) -> int:
    """How many more children to start for ``queued`` blocks, with ``room`` for more beside the
    ``running`` ones, given the CPU seconds each block written so far took and those the children
    took to start (or about ``CHILD_START_S``).

    Each new child must take over at least twice its own start in work, so that starting it costs
    at most a third of what it does. It takes work only once it has started, while the running
    children go on: of the queued work W, the c running children write c starts' worth (s each)
    before the n new ones are ready, and the rest is shared by all, so ``(W - c s) / (c + n) >= 2 s``,
    that is ``n <= (W - 3 c s) / 2 s``. A clean map's block takes a child about 0.25 s of its 0.6-0.7
    s start, so the four to seven blocks left at the end of an 8192² run stay with the one child,
    where a second one started took one or two blocks for 1.5-1.9 CPU s (bench/HISTORY.md, stops
    29 and 30); a noisy map's 2.5 s blocks are shared out. The children's own CPU seconds, not the
    wall's, so that the cores the blocks' step shares with them do not make blocks look dearer.
    Before any block is written their cost is unknown, and every block gets a child.
    """
    if not block_cpu_s:
        return max(0, min(queued, room))
    work = queued * sum(block_cpu_s) / len(block_cpu_s)
    start = sum(start_cpu_s) / len(start_cpu_s) if start_cpu_s else CHILD_START_S
    return max(0, min(queued, room, int((work - 3 * running * start) // (2 * start))))


def block_output_writer(outputs: BlockOutputs, blocks: int, how: str | None):
    """The writer for ``how`` (flows/workers.outputs_while_blocks_run): a context manager that
    gives ``submit(block)``, or gives None when the outputs wait for the last block."""
    if how == "processes":
        return OutputProcesses(outputs, default_processes(blocks), drain=default_drain(blocks))
    if how == "threads":
        return BackgroundWriter(outputs, default_threads(blocks))
    return contextlib.nullcontext()


class BackgroundWriter:
    """Writes blocks' outputs in a few threads of this process; leaving the ``with`` waits for all
    and raises the first error, as does the next ``submit`` once one has failed (the run stops then,
    rather than after its last block). For when no network runs in this process: they share its GIL."""

    def __init__(self, outputs: BlockOutputs, threads: int) -> None:
        self.outputs = outputs
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="block-outputs")
        self.futures: list[Future] = []
        self.errors: list[BaseException] = []

    def __enter__(self) -> "BackgroundWriter":
        return self

    def submit(self, block: Block) -> None:
        if self.errors:
            raise self.errors[0]
        future = self.pool.submit(self.outputs.write, block)
        future.add_done_callback(self._note_failure)
        self.futures.append(future)

    def _note_failure(self, future: Future) -> None:
        if not future.cancelled() and future.exception() is not None:
            self.errors.append(future.exception())

    def __exit__(self, kind, value, traceback) -> None:
        self.pool.shutdown(wait=True, cancel_futures=kind is not None)
        if kind is None:
            for future in self.futures:
                future.result()  # the first failure (a full disk, say) surfaces here


class OutputProcesses:
    """Writes blocks' outputs in child processes (``python -m flows.outputs.child``) while blocks run,
    so that the network's thread keeps the GIL of this process; leaving the ``with`` waits for all
    and raises the first error, as does the next ``submit`` once one has failed.

    Each child gets the outputs' fields once, says when it has imported, then takes one block per
    line on its stdin and answers one line per block. A thread per child feeds it from a shared
    queue, so a free child takes the next block. One child starts at once and imports while the
    first blocks are inferred. More start while blocks run, up to ``processes`` in all, once the
    blocks written so far say that the blocks waiting are worth them (``children_worth_starting``):
    a clean map's block is written in less time than an H200 infers the next, so one child keeps
    pace, while a noisy map's blocks need four. Blocks still queued when the last block is inferred
    are shared with a thread of this process, which has everything imported and whose GIL no
    network needs any more, and with more children, up to ``drain`` in all (the cores are free
    then), by the same rule.
    """

    def __init__(self, outputs: BlockOutputs, processes: int, drain: int | None = None) -> None:
        self.outputs = outputs
        self.fields = json.dumps(asdict(outputs))
        self.drain = max(processes, drain or 0)
        self.queue: queue.Queue[Block | None] = queue.Queue()
        self.errors: list[BaseException] = []
        self.children: list[subprocess.Popen] = []
        self.feeders: list[threading.Thread] = []
        self.start_cpu_s: list[float] = []  # each child's CPU seconds until it was ready (its imports)
        self.block_cpu_s: list[float] = []  # the CPU seconds a child took for each block it wrote
        self.written_here: list[str] = []  # the blocks this process wrote itself, once the blocks were done
        self.processes = processes
        self._start_child()

    def _start_child(self) -> None:
        root = str(Path(__file__).resolve().parents[2])  # the folder that holds flows/
        # glibc's settings that keep each block's memory for the next (flows/runtime/allocator.py): in
        # a child, 13,000 page faults a block became a quarter of that, 0.03-0.04 CPU s less a block
        env = {**child_environment(),
               "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        child = subprocess.Popen([sys.executable, "-m", "flows.outputs.child", self.fields],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        feeder = threading.Thread(target=self._feed, args=(child,), name="block-outputs-feeder", daemon=True)
        self.children.append(child)
        self.feeders.append(feeder)
        feeder.start()

    def __enter__(self) -> "OutputProcesses":
        return self

    def submit(self, block: Block) -> None:
        """Queue ``block``'s outputs; the first error of the blocks before, if one failed: the run
        stops at once rather than after its last block."""
        if self.errors:
            raise self.errors[0]
        self.queue.put(block)
        if self.block_cpu_s:  # once the blocks' cost is known, a backlog worth it gets more children
            for _ in range(children_worth_starting(self.queue.qsize(), self.processes - len(self.children),
                                                   len(self.children), self.block_cpu_s, self.start_cpu_s)):
                self._start_child()

    def _feed(self, child: subprocess.Popen) -> None:
        if not (ready := child.stdout.readline()):  # its import failed, or it was stopped before it was ready
            self.errors.append(RuntimeError(f"the block outputs process stopped (exit code {child.wait()}) "
                                            "before its first block"))
            return
        self.start_cpu_s.append(json.loads(ready)["cpu_s"])
        while (block := self.queue.get()) is not None:
            try:
                child.stdin.write(json.dumps(asdict(block)) + "\n")
                child.stdin.flush()
                answer = child.stdout.readline()
            except OSError as err:  # the child is gone
                answer = ""
                self.errors.append(err)
            if not answer:
                self.errors.append(RuntimeError(f"the block outputs process stopped (exit code {child.poll()}) "
                                                f"while writing {block.name}"))
                return
            answer = json.loads(answer)
            self.block_cpu_s.append(answer["cpu_s"])
            failure = answer["error"]
            if failure:
                self.errors.append(OSError(failure["errno"], failure["strerror"] or failure["message"], failure["filename"])
                                   if failure["errno"] or failure.get("oserror")  # numpy's full disk has no errno
                                   else RuntimeError(f"writing the outputs of {block.name} failed: {failure['message']}"))

    def _write_here(self) -> None:
        """Queued blocks written in this process, once the blocks are all inferred: the queue's
        last blocks are then written two (or more) at a time with no child to start."""
        while (block := self.queue.get()) is not None:
            try:
                self.outputs.write(block)
            except Exception as err:  # noqa: BLE001 - raised in the flow with the children's
                self.errors.append(err)
                return
            self.written_here.append(block.name)

    def __exit__(self, kind, value, traceback) -> None:
        if kind is not None:  # failing anyway: stop the children rather than finish their blocks
            for child in self.children:
                child.kill()
        else:
            # the thread below writes beside the running children from the start, as one more of them
            for _ in range(children_worth_starting(self.queue.qsize(), self.drain - len(self.children),
                                                   len(self.children) + 1, self.block_cpu_s, self.start_cpu_s)):
                self._start_child()
            here = threading.Thread(target=self._write_here, name="block-outputs-drain", daemon=True)
            self.feeders.append(here)
            here.start()
        for _ in self.feeders:
            self.queue.put(None)
        for feeder in self.feeders:
            feeder.join()
        for child in self.children:
            if child.stdin:
                child.stdin.close()
            child.wait()
            child.stdout.close()
        if kind is None and self.errors:
            raise self.errors[0]


def serve(outputs: BlockOutputs) -> None:
    """A child of ``OutputProcesses``: a line once it is ready, then one block per line in and one
    answer per line out, until stdin closes. Each line says the CPU seconds it took, the first
    those of the child's start: what the parent weighs another child against."""
    print(json.dumps({"ready": True, "cpu_s": time.process_time()}), flush=True)
    for line in sys.stdin:
        block = Block(**json.loads(line))
        started = time.process_time()
        try:
            outputs.write(block)
            answer = {"block": block.name, "error": None}
        except Exception as err:  # noqa: BLE001 - said to the parent, which raises it in the flow
            answer = {"block": block.name, "error": {"errno": getattr(err, "errno", None), "message": str(err),
                                                     "oserror": isinstance(err, OSError),
                                                     "strerror": getattr(err, "strerror", None),
                                                     "filename": getattr(err, "filename", None)}}
        print(json.dumps({**answer, "cpu_s": time.process_time() - started}), flush=True)


def _write_pieces(found: BlockPieces, path: Path) -> None:
    """The pieces as rows (geometry as WKB), and the seam edges as the file's metadata."""
    pieces = found.pieces
    table = pa.table({
        "geometry": pa.array(shapely.to_wkb([p.geometry for p in pieces]) if pieces else [], pa.binary()),
        **{name: [getattr(p, name) for p in pieces] for name in PIECE_COLUMNS},
    }, schema=pa.schema([("geometry", pa.binary()), ("pixels", pa.int64()), ("prob_sum", pa.float64()),
                         ("prob_max", pa.float64()), ("outline_pixels", pa.int64()),
                         ("outline_observed", pa.int64())]))
    edges = {f"edge_{side}": edge.astype("<i4").tobytes() for side, edge in found.edges.items()}
    pq.write_table(table.replace_schema_metadata(edges), path)


def _read_pieces(path: Path) -> BlockPieces:
    table = pq.read_table(path)
    columns = table.to_pydict()
    geometries = shapely.from_wkb(columns["geometry"])
    pieces = [Piece(geometry, *values) for geometry, *values in zip(geometries, *(columns[c] for c in PIECE_COLUMNS))]
    edges = {key.decode().removeprefix("edge_"): np.frombuffer(value, "<i4")
             for key, value in (table.schema.metadata or {}).items() if key.startswith(b"edge_")}
    return BlockPieces(pieces, edges)

