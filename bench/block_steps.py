"""Where the pipeline's own CPU goes, step by step, outside Prefect and Dask.

``bench/pipeline.py --stand-in-ms`` gives the pipeline's CPU seconds per megapixel of region with
the network taken out, by flow step. Inside the blocks' step the blocks, stitching and Prefect run
at once, and zarr and torch do much of the work in threads of their own, so that step cannot be
split from inside the flow. This script runs the same functions one after the other on a generated
N² region (the scenes of bench/pipeline.py, blocks of 2048, a stand-in network that costs nothing
and marks the generated changes) and reports the CPU seconds of this process (all its threads)
and of its ended children for each:

    load scenes                       catalog.prepare.prepare_chosen: read both dates, write scenes.zarr
    blocks: read                      flows.blocks.infer.read_block
    blocks: windows and sums          which windows to run, their batches and weighted sums, as
                                      process_block makes them on a CPU worker that runs one block
                                      at a time (on one torch thread; network CPU taken out)
    blocks: store sums                ProbabilityStore.write_sums
    stitch: add sums                  flows.blocks.stitch.stitch_block
    stitch: write probabilities       ProbabilityStore.write_block (change_prob.zarr)
    outputs: ...                      each part of BlockOutputs.write: read the block back, both COGs'
                                      tiles and overview tiles, polygon pieces, preview samples
    outputs: a child's start          importing flows.outputs.child in a fresh interpreter

Figures per Mpx of region; the sum is what the flow's steps cost without Prefect, Dask and the
run folder around them.

    python -m bench.block_steps --size 8192
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import zarr

from bench.pipeline import StandInNetwork, write_catalog, NETWORK_CPU
from catalog import date_pair, open_source, parse_region
from catalog.prepare import choose_pair, prepare_chosen
from catalog.store import open_scenes
from dsqnet.inference.lattice import Lattice
from flows.blocks.infer import block_window_sums, read_block, torch_threads, windows_to_run
from flows.blocks.lattice import plan_blocks
from flows.blocks.stitch import stitch_block
from flows.blocks.store import ProbabilityStore
from flows.outputs import cog, rasters
from flows.outputs.classes import change_classes
from flows.outputs.per_block import BlockOutputs, _write_pieces
from flows.outputs.polygons import block_pieces
from flows.outputs.preview import block_panels, preview_step


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Steps:
    """CPU seconds per named step, summed over calls."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def run(self, name: str, function, *args):
        started = cpu_seconds()
        result = function(*args)
        self.seconds[name] = self.seconds.get(name, 0.0) + cpu_seconds() - started
        return result


def measure(size: int, work: Path, block_size: int = 2048, batch: int = 16) -> dict:
    catalog, region_json = write_catalog(work / "scenes", size)
    region = parse_region(region_json)
    before, after = date_pair("2021-06-10", "2023-06-12", 3)
    first, second = choose_pair(region, before, after, open_source(str(catalog)))
    steps = Steps()
    import dask

    with dask.config.set(scheduler="threads"):  # as the flow's load-scenes task
        scenes = steps.run("load scenes", prepare_chosen, region, before, after, first, second, work / "scenes.zarr")
    dataset = open_scenes(scenes.path)
    height, width = dataset.sizes["y"], dataset.sizes["x"]
    lattice, blocks = Lattice(height, width), plan_blocks(height, width, block_size)
    grid = (blocks[-1].row + 1, blocks[-1].col + 1)
    store = ProbabilityStore.prepare(work / "change_prob.zarr", dataset, grid, "bench")
    group = zarr.open_group(str(scenes.path), mode="r")
    stand_in = StandInNetwork(0)

    for block in blocks:  # the blocks' step, as process_block runs it
        inputs = steps.run("blocks: read", read_block, group, lattice, block)
        network = NETWORK_CPU[0]
        with torch_threads(1):
            windows = windows_to_run(inputs, lattice, block)
            sums = steps.run("blocks: windows and sums", block_window_sums, stand_in.predict_proba, inputs, lattice,
                             windows, batch)
        steps.seconds["blocks: windows and sums"] -= NETWORK_CPU[0] - network
        steps.run("blocks: store sums", store.write_sums, block, sums)
    for block in blocks:
        probability = steps.run("stitch: add sums", stitch_block, store, group, lattice, blocks, block)
        steps.run("stitch: write probabilities", store.write_block, block, probability)

    outputs = BlockOutputs.prepare(store, scenes.grid.crs.to_wkt(), scenes.grid.transform, block_size, 0.5, 10.0,
                                   scenes=scenes.path)
    for block in blocks:  # the parts of BlockOutputs.write
        probability = steps.run("outputs: read the block back", lambda: np.asarray(
            store.probability()[block.top:block.bottom, block.left:block.right]))
        classes = steps.run("outputs: classes", change_classes, probability, outputs.threshold)
        steps.run("outputs: change_prob.tif tiles", cog.write_block_levels, probability, block, outputs.levels,
                  rasters.PROBABILITY, outputs.crs, outputs.affine, outputs.path("prob", block))
        steps.run("outputs: change.tif tiles", cog.write_block_levels, classes, block, outputs.levels,
                  rasters.change_layer(outputs.threshold), outputs.crs, outputs.affine, outputs.path("change", block))
        pieces = steps.run("outputs: polygon pieces", block_pieces, probability, block, outputs.affine,
                           outputs.shape, outputs.threshold, outputs.min_area_m2)
        steps.run("outputs: polygon pieces", _write_pieces, pieces, outputs.path("pieces", block))
        steps.run("outputs: preview samples", block_panels, outputs.scenes, probability, block,
                  preview_step(outputs.shape), outputs.threshold)
    root = str(Path(__file__).resolve().parents[1])
    steps.run("outputs: a child's start", lambda: subprocess.run(
        [sys.executable, "-c", "import flows.outputs.child"], check=True, cwd=root))
    megapixels = height * width / 1e6
    total = sum(steps.seconds.values())
    return {"size": size, "grid": [height, width], "blocks": len(blocks), "cpu_s": round(total, 2),
            "cpu_s_per_mpx": round(total / megapixels, 4),
            "by_step_s": {k: round(v, 2) for k, v in steps.seconds.items()},
            "by_step_s_per_mpx": {k: round(v / megapixels, 4) for k, v in steps.seconds.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dsqnet-block-steps-") as tmp:
        row = measure(args.size, Path(tmp))
    for name, value in row["by_step_s_per_mpx"].items():
        print(f"{name:36s} {row['by_step_s'][name]:7.2f} s  {value:.4f} s/Mpx")
    print(f"{'all of them':36s} {row['cpu_s']:7.2f} s  {row['cpu_s_per_mpx']:.4f} s/Mpx ({row['size']}², "
          f"{row['blocks']} blocks)")
    if args.json:
        args.json.write_text(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
