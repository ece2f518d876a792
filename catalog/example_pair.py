"""One before/after pair on one grid, with its true change: for ``dsqnet predict`` on a fresh machine.

It is a small piece of the demo world (``catalog.demo``): the first and last demo dates rendered on
the first date's grid (UTM 33N, 0.5 m) as georeferenced GeoTIFFs, so a newcomer can run the model
on realistic imagery with no network and compare with the truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .demo import change_mask, date_grids, make_canvas, make_world, render
from .demo.write import write_cog, write_mask


@dataclass(frozen=True)
class ExamplePair:
    before: Path
    after: Path
    truth: Path


def write_example_pair(out_dir: str | Path, size_px: int = 768, seed: int = 0) -> ExamplePair:
    """Write ``before.tif``, ``after.tif`` and ``truth.tif`` (0 unchanged / 1 changed) into ``out_dir``."""
    world = make_world(seed, size_px)
    grid = date_grids(world)[0]
    canvas = make_canvas(grid, world.origin)
    first, last = 0, len(world.dates) - 1
    out = Path(out_dir)
    pair = ExamplePair(out / "before.tif", out / "after.tif", out / "truth.tif")
    for path, index in ((pair.before, first), (pair.after, last)):
        write_cog(path, render(world, index, canvas, np.random.default_rng([seed, 3, index])), grid)
    write_mask(pair.truth, change_mask(world, world.dates[first], world.dates[last], canvas), grid)
    return pair
