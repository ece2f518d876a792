"""The embedded default: a synthetic demo catalog of aerial scenes, built from a seed with no network.

Why it exists: a newcomer (and CI) must be able to run the whole path — find scenes in a STAC catalog,
load two dates onto one grid, detect change, compare with the truth, fine-tune on labels — on a fresh
machine. Real imagery cannot ship with the repository, so we make some.

How it stays honest: a procedural landscape (the *world*: fields, roads, trees, buildings with shadows)
is defined in metres of EPSG:32633. Each acquisition date is rendered onto its OWN grid — the grids
differ on purpose in resolution, footprint and even UTM zone, as real acquisitions do — by asking the
world what lies at the ground position of every pixel centre. A building therefore sits on the same
spot of the ground in every date whatever the grid, and the change between two dates (buildings added
or removed) is known exactly, as rasters and polygons. Colours, sun and sensor noise differ per date,
so a change detector must ignore them.

Everything is deterministic from the seed. Never imports torch, dsqnet, flows or prefect.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .render import (
    ACQUISITIONS, Acquisition, Canvas, Grid, change_mask, date_grids, make_canvas, render, training_grid,
)
from .world import (
    BASE_RESOLUTION, CENTRE_LONLAT, DATES, DEFAULT_SIZE_PX, TILE, WORLD_CRS, Box, Building, DateStyle, Road, Tree,
    World, demo_origin, make_world, training_tiles_per_side,
)
from .write import (
    COLLECTION_ID, MAX_TRAINING_TILES, REGION_NAME, WATCH_ZONE_NAME, cog_path, item_id, write_cog, write_regions,
    write_stac, write_training, write_truth,
)

__all__ = [
    "ACQUISITIONS", "BASE_RESOLUTION", "CENTRE_LONLAT", "COLLECTION_ID", "DATES", "DEFAULT_SIZE_PX",
    "MAX_TRAINING_TILES", "REGION_NAME", "TILE", "WATCH_ZONE_NAME", "WORLD_CRS", "Acquisition", "Box", "Building",
    "Canvas", "DateStyle", "DemoData", "Grid", "Road", "Tree", "World", "build_demo", "change_mask", "cog_path",
    "date_grids", "demo_origin", "item_id", "make_canvas", "make_world", "render", "training_grid",
    "training_tiles_per_side", "write_cog", "write_regions", "write_stac", "write_training", "write_truth",
]


@dataclass(frozen=True)
class DemoData:
    """Where ``build_demo`` wrote everything; the paths other code (and tests) start from."""

    root: Path
    catalog: Path
    regions: Path
    region_name: str
    dates: tuple[str, ...]
    truth: dict[tuple[str, str], tuple[Path, Path]]
    training: Path


def build_demo(out_dir: str | Path, seed: int = 0, size_px: int = DEFAULT_SIZE_PX) -> DemoData:
    """Write the whole embedded default under ``out_dir``: COGs + STAC catalog, regions.yaml, ground truth
    for every date pair, and a training set. The same seed and size give the same pixels."""
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    world = make_world(seed, size_px)
    grids = date_grids(world)
    canvases = [make_canvas(grid, world.origin) for grid in grids]
    stac_dir = root / "stac"
    cogs = []
    for k, (date, canvas) in enumerate(zip(world.dates, canvases)):
        rgb = render(world, k, canvas, np.random.default_rng([seed, 0, k]))
        cogs.append(write_cog(cog_path(stac_dir, date), rgb, canvas.grid))
    return DemoData(
        root=root, catalog=write_stac(grids, cogs, stac_dir), regions=write_regions(world, root / "regions.yaml"),
        region_name=REGION_NAME, dates=world.dates, truth=write_truth(world, canvases, root / "truth"),
        training=write_training(world, root / "training"),
    )
