"""Small real inputs for the flow tests: a tiny model file and a two-date catalog with a nodata hole."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from catalog.store import write_scenes
from dsqnet import build_model
from dsqnet.weights.model_file import save
from flows.workers.cluster import local_worker_threads
from tests.catalog.stac_helpers import SPOT, WORLD_CRS, region_around, utc, write_catalog, write_scene

# A DSQNet small enough that a few hundred 128-px windows take seconds on two CPU cores.
TINY = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), head_width=16)
# Fast windows for tests; the flow's defaults are the paper's 512 / 256.
FAST = dict(window=128, stride=64, batch_size=16, min_area_m2=0.0)
SCENE_PX, HOLE_PX, REGION_HALF_M = 640, 200, 140.0


def cli_env(prefect_api: str) -> dict:
    """The environment of a ``dsqnet`` subprocess: this session's Prefect API, and the torch threads this
    process's own runs give their workers (not OMP_NUM_THREADS as a local cluster has rewritten it here),
    so a run started there computes the same numbers as one started here."""
    return {**os.environ, "PREFECT_API_URL": prefect_api, "OMP_NUM_THREADS": str(local_worker_threads(1))}


def tiny_model_file(path: Path, seed: int = 0, **metadata) -> Path:
    torch.manual_seed(seed)
    return save(build_model("dsqnet_swin_mini", **TINY), path, metadata={"training": {"trained": False}, **metadata})


def hole_catalog(folder: Path) -> tuple[Path, str]:
    """Two dates at 0.5 m in UTM 33N around the test spot; the after scene has a nodata hole in its
    north-west corner, part of which lies inside the region. Returns (catalog, region as GeoJSON)."""
    folder.mkdir(parents=True, exist_ok=True)
    origin = (SPOT[0] - SCENE_PX / 4, SPOT[1] + SCENE_PX / 4)
    hole = (slice(0, HOLE_PX), slice(0, HOLE_PX))
    items = [
        write_scene(folder, "before", utc("2021-06-10"), WORLD_CRS, origin, 0.5, (SCENE_PX, SCENE_PX)),
        write_scene(folder, "after", utc("2023-06-12"), WORLD_CRS, origin, 0.5, (SCENE_PX, SCENE_PX), hole=hole),
    ]
    return write_catalog(folder, items), json.dumps(region_around(SPOT, REGION_HALF_M))


def hole_pixels_in_region() -> tuple[slice, slice]:
    """Where the after scene's hole falls on the region's 0.5 m grid (rows, cols)."""
    inset = int((SCENE_PX / 4 - REGION_HALF_M) / 0.5)
    return slice(0, HOLE_PX - inset), slice(0, HOLE_PX - inset)


def content_model(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """A stand-in network whose output depends only on a window's pixels (for exact tiling checks)."""
    diff = (before.float() - after.float()).abs().mean(dim=1) / 255.0
    return diff + 0.01 * before[:, 0].float() / 255.0


def scenes_store(path, height: int, width: int, seed: int = 0, hole: tuple[slice, slice] | None = None) -> xr.Dataset:
    """A real scenes.zarr of random pixels at 0.5 m in UTM 33N (the after date not observed in ``hole``)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (2, 3, height, width), dtype=np.uint8)
    image[1, :, height // 3: height // 2, width // 4: width // 2] = 250  # a "change"
    valid = np.ones((2, height, width), bool)
    if hole:
        valid[1][hole] = False
        image[1][:, hole[0], hole[1]] = 0
    ds = xr.Dataset({"image": (("time", "band", "y", "x"), image), "valid": (("time", "y", "x"), valid)},
                    coords={"y": 5.4e6 - 0.5 * (np.arange(height) + 0.5), "x": 7.2e5 + 0.5 * (np.arange(width) + 0.5)})
    ds = ds.rio.write_crs("EPSG:32633")
    for name in ("image", "valid"):
        ds[name].attrs["grid_mapping"] = "spatial_ref"
    write_scenes(ds, path, "test", 256)
    return xr.open_zarr(str(path), decode_coords="all", consolidated=False)


def heartbeating_flow_runs(expected: set[str], timeout: float = 30.0) -> set[str]:
    """The ids of the flow runs that sent Prefect a heartbeat, once ``expected`` are among them (or time is up).

    Heartbeat events reach the API through Prefect's event pipeline, a moment after the run.
    """
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all()
    deadline = time.monotonic() + timeout
    while True:
        beats = EventFilter(event=EventNameFilter(name=["prefect.flow-run.heartbeat"]))  # occurred until now
        with get_client(sync_client=True) as client:
            page = client.read_events(beats, limit=50)
            events = list(page.events)
            while page.next_page and len(events) < page.total:
                page = client.read_events_page(page.next_page)
                events += page.events
        seen = {event.resource.id.removeprefix("prefect.flow-run.") for event in events}
        if expected <= seen or time.monotonic() > deadline:
            return seen
        time.sleep(0.5)
