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

from collections.abc import Callable

import numpy as np
import zarr

from flows.blocks.store import ProbabilityStore
from dsqnet.inference.lattice import Lattice
from flows.blocks.lattice import Block, block_reach


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


class Stitcher:
    """Stitches each block as soon as every block whose windows reach into it has stored its sums.

    Blocks finish one at a time on the workers. Stitching each one when its last neighbour is in,
    in the flow's process while the workers go on, takes most of that work out of the wait after
    the last block. What it
    writes does not depend on when: ``stitch_block`` adds every block's sums in plan order.
    """

    def __init__(self, store: ProbabilityStore, scenes_path: str, lattice: Lattice, blocks: list[Block],
                 on_stitched: Callable[[Block], object] | None = None) -> None:
        self.store, self.lattice, self.blocks = store, lattice, blocks
        self.on_stitched = on_stitched  # told of each block once its probabilities are in the store
        self.scenes = zarr.open_group(scenes_path, mode="r")
        self.summed = store.summed_blocks()
        done = store.done_blocks()
        # each block not yet stitched -> the blocks whose sums it needs (its own, and neighbours reaching in)
        reaches = [(o, block_reach(lattice, o)) for o in blocks]
        self.waiting = {(b.row, b.col): {(o.row, o.col) for o, reach in reaches if reach.overlap(b) is not None}
                        for b in blocks if (b.row, b.col) not in done}

    def add(self, block: Block) -> list[Block]:
        """``block``'s sums are stored: stitch every block that now has all it needs, and return those."""
        self.summed.add((block.row, block.col))
        return self.stitch_ready()

    def stitch_ready(self) -> list[Block]:
        ready = [b for b in self.blocks
                 if (b.row, b.col) in self.waiting and self.waiting[(b.row, b.col)] <= self.summed]
        for block in ready:
            self.store.write_block(block, stitch_block(self.store, self.scenes, self.lattice, self.blocks, block))
            del self.waiting[(block.row, block.col)]
            if self.on_stitched:
                self.on_stitched(block)
        return ready


def stitch(store: ProbabilityStore, scenes_path: str, lattice: Lattice, blocks: list[Block]) -> int:
    """Write the probabilities of every block not yet done; returns how many were stitched."""
    summed = store.summed_blocks()
    missing = [b.name for b in blocks if (b.row, b.col) not in summed]
    if missing:
        raise RuntimeError(f"cannot stitch: {len(missing)} block(s) have no window sums yet ({', '.join(missing[:5])})")
    return len(Stitcher(store, scenes_path, lattice, blocks).stitch_ready())
