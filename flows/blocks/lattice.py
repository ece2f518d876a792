"""The scene cut into blocks of work over the one lattice of windows (``dsqnet.inference.lattice``).

Every window is run exactly once, by the block its cell starts in (the block *owns* it). A block's
windows reach past the block by up to a window's width; the block keeps the weighted sum of its
windows over everything they reach, and stitching adds, for each block, the sums of every block
that reaches into it (flows/blocks/stitch.py). So no window is computed twice and the mosaic cannot
depend on how the scene was cut. The blend weight is ``dsqnet.inference.blend``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from dsqnet.inference.lattice import Lattice


@dataclass(frozen=True)
class Block:
    """A rectangle of the scene that one task computes and writes: rows ``[top, bottom)``, cols ``[left, right)``."""

    row: int
    col: int
    top: int
    bottom: int
    left: int
    right: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.bottom - self.top, self.right - self.left

    @property
    def name(self) -> str:
        return f"block-{self.row}-{self.col}"


def plan_blocks(height: int, width: int, block_size: int) -> list[Block]:
    """The scene cut into ``block_size`` squares (smaller at the bottom and right edges), row-major."""
    if block_size <= 0:
        raise ValueError(f"block size must be positive, got {block_size}")
    return [
        Block(r, c, top, min(top + block_size, height), left, min(left + block_size, width))
        for r, top in enumerate(range(0, height, block_size))
        for c, left in enumerate(range(0, width, block_size))
    ]


@dataclass(frozen=True)
class BlockSelection:
    """Some of the blocks of ``plan_blocks(height, width, block_size)``, as runs ``[start, stop)`` of
    their row-major indices: a few numbers however many blocks there are.

    A subflow's parameters go to the Prefect API, which refuses more than 512 KB of them; as lists of
    blocks, a region of 3,000 blocks (about 110 km square at 0.5 m, blocks of 4096) could not start its
    blocks' subflow. Picked blocks come in runs (all of them, or all but those a resumed run has), so
    the runs stay few.
    """

    height: int
    width: int
    block_size: int
    runs: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, height: int, width: int, block_size: int, picked: Iterable[Block]) -> "BlockSelection":
        columns = -(-width // block_size)
        runs: list[list[int]] = []
        for index in sorted(block.row * columns + block.col for block in picked):
            if runs and runs[-1][1] == index:
                runs[-1][1] += 1
            else:
                runs.append([index, index + 1])
        return cls(height, width, block_size, tuple((start, stop) for start, stop in runs))

    def plan(self) -> list[Block]:
        """Every block of the scene, picked or not (stitching needs its neighbours)."""
        return plan_blocks(self.height, self.width, self.block_size)

    def blocks(self) -> list[Block]:
        """The picked blocks, row-major."""
        plan = self.plan()
        return [plan[index] for start, stop in self.runs for index in range(start, stop)]

    def __len__(self) -> int:
        return sum(stop - start for start, stop in self.runs)


@dataclass(frozen=True)
class Reach:
    """The pixels a block's windows cover: rows ``[top, bottom)``, cols ``[left, right)``, possibly
    past the scene's edges; empty when the block owns no window."""

    top: int
    bottom: int
    left: int
    right: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.bottom - self.top, self.right - self.left

    def overlap(self, block: Block) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
        """Where this reach meets ``block``: (slices into the reach, slices into the block), or None."""
        top, bottom = max(self.top, block.top), min(self.bottom, block.bottom)
        left, right = max(self.left, block.left), min(self.right, block.right)
        if top >= bottom or left >= right:
            return None
        return ((slice(top - self.top, bottom - self.top), slice(left - self.left, right - self.left)),
                (slice(top - block.top, bottom - block.top), slice(left - block.left, right - block.left)))


def block_windows(lattice: Lattice, block: Block) -> list[tuple[int, int]]:
    """(top, left) of every window ``block`` owns (whose cell starts inside it), row-major."""
    rows = lattice.starts_owned(lattice.height, block.top, block.bottom)
    cols = lattice.starts_owned(lattice.width, block.left, block.right)
    return [(int(r), int(c)) for r in rows for c in cols]


@lru_cache(maxsize=4096)
def block_reach(lattice: Lattice, block: Block) -> Reach:
    """The rectangle covered by the windows ``block`` owns."""
    windows = block_windows(lattice, block)
    if not windows:
        return Reach(block.top, block.top, block.left, block.left)
    top, left = min(t for t, _ in windows), min(c for _, c in windows)
    bottom = max(t for t, _ in windows) + lattice.window
    right = max(c for _, c in windows) + lattice.window
    return Reach(top, bottom, left, right)
