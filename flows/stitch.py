"""Blocks' window sums -> the seamless probability mosaic.

A pixel's probability is the weighted mean of every window that covers it. Those windows belong to
up to four blocks (the pixel's own and the neighbours whose windows reach across the seam), so a
block's probabilities are: the sums of every block whose reach meets it, added in plan order,
divided by the total window weight there (the lattice's coverage, a product of one sum per axis),
and NaN where the pixel is not observed in both dates. Stitching a block reads only its own pixels
of each sum (the files are memory-mapped) and writes only its own chunks, so it runs per block and
a crash costs at most the block in hand.
"""

from __future__ import annotations

import numpy as np
import zarr

from .probability_store import ProbabilityStore
from .tiling import Block, Lattice, block_reach


def stitch_block(store: ProbabilityStore, scenes: zarr.Group, lattice: Lattice, blocks: list[Block],
                 block: Block) -> np.ndarray:
    """The probabilities of ``block``'s own pixels from every block's window sums."""
    total = np.zeros(block.shape, np.float32)
    for other in blocks:
        where = block_reach(lattice, other).overlap(block)
        if where is None:
            continue
        sums = store.read_sums(other)
        if sums is not None:
            inside_sums, inside_block = where
            total[inside_block] += sums[inside_sums]
    weight = np.outer(lattice.coverage(lattice.height, block.top, block.bottom),
                      lattice.coverage(lattice.width, block.left, block.right))
    probability = (total / weight).astype(np.float32)
    observed = np.asarray(scenes["valid"][:, block.top:block.bottom, block.left:block.right]).all(axis=0)
    probability[~observed] = np.nan
    return probability


def stitch(store: ProbabilityStore, scenes_path: str, lattice: Lattice, blocks: list[Block]) -> int:
    """Write the probabilities of every block not yet done; returns how many were stitched."""
    summed = store.summed_blocks()
    missing = [b.name for b in blocks if (b.row, b.col) not in summed]
    if missing:
        raise RuntimeError(f"cannot stitch: {len(missing)} block(s) have no window sums yet ({', '.join(missing[:5])})")
    scenes = zarr.open_group(scenes_path, mode="r")
    done = store.done_blocks()
    todo = [b for b in blocks if (b.row, b.col) not in done]
    for block in todo:
        store.write_block(block, stitch_block(store, scenes, lattice, blocks, block))
    return len(todo)
