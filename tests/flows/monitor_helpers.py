"""Real inputs with a known change history for the monitoring tests.

A tiny world (the stac_helpers field with its bright spot) seen on several days; on some days
white squares ("new buildings") appear at known places and stay. A hand-set DSQNet flags exactly
the pixels that turned bright, so each pair's change, and whether it crosses an alert threshold,
is known before the flow runs, while the flow still runs the real network through detect-changes.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import rasterio
import torch
import yaml
from shapely.geometry import box, mapping

from catalog.grid import reproject
from dsqnet import build_model
from dsqnet.weights.model_file import save
from tests.catalog.stac_helpers import SPOT, WORLD_CRS, region_around, utc, write_catalog, write_scene
from tests.flows.flow_helpers import TINY

SCENE_PX, RESOLUTION = 320, 0.5  # scenes of 160 m around the spot
REGION_HALF_M = 60.0  # the watched region: 120 m around the spot
ORIGIN = (SPOT[0] - SCENE_PX * RESOLUTION / 2, SPOT[1] + SCENE_PX * RESOLUTION / 2)

# Squares painted white, as (rows, cols) of the scenes; each appears on its date and stays.
SQUARE_A = (slice(80, 110), slice(200, 230))  # 15 x 15 m in zone "hot"
SQUARE_B = (slice(120, 132), slice(240, 252))  # 6 x 6 m in zone "hot"
SQUARE_C = (slice(200, 230), slice(80, 110))  # 15 x 15 m in zone "quiet"
DAYS = {"2021-06-10": [], "2022-06-10": [SQUARE_A], "2023-06-10": [SQUARE_A, SQUARE_B],
        "2024-06-10": [SQUARE_A, SQUARE_B, SQUARE_C]}
PARTIAL_DAY = "2022-09-01"  # a scene that covers only a third of the region: no acquisition of it
ZONES_M = {"hot": (5, 5, 55, 55), "quiet": (-55, -55, -5, -5)}  # offsets from the spot, metres (W, S, E, N)


def square_area_m2(square: tuple[slice, slice]) -> float:
    rows, cols = square
    return (rows.stop - rows.start) * (cols.stop - cols.start) * RESOLUTION**2


def write_scenes(folder: Path, days: list[str], partial: bool = True) -> Path:
    """COGs and a STAC catalog of ``days`` (plus the partial scene) in ``folder``; returns catalog.json.

    Called again with more days it rewrites the catalog in place: new acquisitions arriving.
    """
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for day in days:
        item = write_scene(folder, f"scene-{day}", utc(day), WORLD_CRS, ORIGIN, RESOLUTION, (SCENE_PX, SCENE_PX))
        paint(folder / f"scene-{day}.tif", DAYS[day])
        items.append(item)
    if partial:
        shifted = (ORIGIN[0] + 100.0, ORIGIN[1])
        items.append(write_scene(folder, f"scene-{PARTIAL_DAY}", utc(PARTIAL_DAY), WORLD_CRS, shifted, RESOLUTION,
                                 (SCENE_PX, SCENE_PX)))
    return write_catalog(folder, items)


def paint(path: Path, squares: list[tuple[slice, slice]]) -> None:
    """White squares into a scene COG (rewritten as a COG with the same profile)."""
    with rasterio.open(path) as src:
        data, profile = src.read(), src.profile
    for rows, cols in squares:
        data[:, rows, cols] = 255
    profile.update(driver="COG", blocksize=256)
    for key in ("blockxsize", "blockysize", "tiled", "interleave"):
        profile.pop(key, None)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


def lonlat_box(offsets: tuple[float, float, float, float]) -> dict:
    west, south, east, north = offsets
    square = box(SPOT[0] + west, SPOT[1] + south, SPOT[0] + east, SPOT[1] + north)
    return mapping(reproject(square, WORLD_CRS, "EPSG:4326"))


def write_regions(path: Path, monitor: dict | None = None, name: str = "town", zones: bool = True) -> Path:
    """A regions file with one region around the spot, its two watch zones and a ``monitor`` section."""
    entry: dict = {"geometry": _plain(region_around(SPOT, REGION_HALF_M))}
    if zones:
        entry["watch_zones"] = {zone: _plain(lonlat_box(offsets)) for zone, offsets in ZONES_M.items()}
    if monitor is not None:
        entry["monitor"] = monitor
    path.write_text(yaml.safe_dump({name: entry}, sort_keys=False))
    return path


def _plain(geojson: dict) -> dict:
    """GeoJSON with lists instead of tuples, so YAML writes plain sequences."""
    return {"type": geojson["type"], "coordinates": [[list(p) for p in ring] for ring in geojson["coordinates"]]}


def painted_change_model(path: Path) -> Path:
    """A tiny DSQNet set by hand to flag where the after image turned bright (white paint).

    The patch embedding turns each 4x4 patch into +-1 by whether its mean normalised brightness is
    above 1.0 (the field is about -0.5, white paint 2.4); every Swin residual branch is zero, so the
    fine pyramid level carries that sign. The query boxes are pushed wholly outside the window, so
    the cross-date tokens are zero and leave the maps alone; the flow alignment is zero (identity).
    The classifier then sees ``bright_after - bright_before``: logit +4 where paint appeared, -4
    elsewhere (probabilities 0.98 and 0.02).
    """
    model = build_model("dsqnet_swin_mini", **TINY)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        embed = model.backbone.patch_embed
        embed.proj.weight[0], embed.proj.bias[0] = 1 / 48, -1.0
        embed.proj.weight[1], embed.proj.bias[1] = -1 / 48, 1.0
        embed.norm.weight.fill_(1.0)
        model.backbone.norm0.weight.fill_(1 / math.sqrt(8))  # LayerNorm of (d, -d, 0...) is +-sqrt(8)
        head = model.decode_head
        width, half = head.config.head_width, head.config.head_width // 2
        head.CFP.convs[0].conv.weight[0, 2 * width] = 1.0  # fine channel 0 = the finest level's channel 0
        head.CFP.convs[0].bn.weight[0] = 1.0
        head.key_generation.query_key_conv.bn.bias.fill_(20.0)  # boxes centred on the window's far corner
        head.point2[4].bias.fill_(20.0)  # sample points at the boxes' far edge: outside the map, zero
        head.norm_conv.conv.weight[0, 0] = 1.0
        head.norm_conv.bn.weight[0] = 1.0
        head.conv_seg.weight[1, half], head.conv_seg.weight[1, 0] = 4.0, -4.0  # after minus before
        head.conv_seg.bias[1] = -4.0
    return save(model, path, metadata={"training": {"trained": False, "hand_set": "flags paint that appeared"}})


def expected_mask(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Pixels the hand-set model is built to flag (for checking the model itself)."""
    return (after.mean(axis=-1) > 200) & ~(before.mean(axis=-1) > 200)
