"""COGs assembled from the tiles their blocks encoded: every level's pixels, GDAL's layout, BigTIFF."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate

from flows.outputs.assemble import write_change_rasters
from flows.outputs import cog as cog_tiles
from flows.outputs.per_block import BlockOutputs
from flows.outputs.cog import Levels
from flows.blocks.store import ProbabilityStore
from flows.outputs.classes import change_classes
from flows.outputs.rasters import majority_of_observed, mean_of_observed
from flows.blocks.lattice import plan_blocks
from tests.flows.flow_helpers import scenes_store

H, W = 1100, 1700


def speckled(height: int, width: int, seed: int = 5) -> np.ndarray:
    """Changes in 32-px fields, every pixel's value its own, 1 % of pixels unobserved (few polygons to trace)."""
    rng = np.random.default_rng(seed)
    fields = np.kron(rng.random((height // 32 + 1, width // 32 + 1)), np.ones((32, 32)))[:height, :width]
    prob = (fields * 0.96 + rng.random((height, width)) * 0.04).astype(np.float32)
    prob[rng.random((height, width)) < 0.01] = np.nan
    prob[200:260, :] = np.nan  # a strip seen in one date only
    return prob


def cogs(tmp_path, prob: np.ndarray, block_size: int):
    """Both COGs of ``prob`` made the way a run makes them, in blocks of ``block_size``."""
    height, width = prob.shape
    scenes = scenes_store(tmp_path / "scenes.zarr", height, width)
    blocks = plan_blocks(height, width, block_size)
    store = ProbabilityStore.prepare(tmp_path / "prob.zarr", scenes, (blocks[-1].row + 1, blocks[-1].col + 1), "k")
    for block in blocks:
        store.write_block(block, prob[block.top:block.bottom, block.left:block.right])
    outputs = BlockOutputs.prepare(store, "EPSG:32633", scenes.rio.transform(), block_size, 0.5, 0.0)
    folder = tmp_path / "run"
    folder.mkdir()
    write_change_rasters(outputs, blocks, folder)
    return folder, outputs, scenes.rio.transform()


@pytest.mark.parametrize("block_size", [512, 1024, 1536, 4096])
def test_every_level_of_both_cogs_holds_the_blocks_pixels_whatever_the_block_size(tmp_path, block_size):
    """512 and 1536: every overview spans blocks; 1024: the first lies inside them; 4096: one block."""
    prob = speckled(H, W)
    folder, outputs, transform = cogs(tmp_path, prob, block_size)
    assert outputs.levels.factors == [2, 4]  # 1700 -> 850 -> 425
    for name, pixels, halve in [("change_prob.tif", prob, mean_of_observed),
                                ("change.tif", change_classes(prob, 0.5), majority_of_observed)]:
        valid, errors, warnings = cog_validate(str(folder / name))
        assert valid and not warnings, (errors, warnings)
        with rasterio.open(folder / name) as cog:
            assert cog.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
            assert cog.overviews(1) == [2, 4] and cog.transform == transform and cog.crs.to_epsg() == 32633
            assert np.array_equal(cog.read(1), pixels, equal_nan=True)
        level = pixels
        for index in range(2):
            level = halve(level)
            with rasterio.open(folder / name, overview_level=index) as overview:
                assert np.array_equal(overview.read(1), level, equal_nan=True), (name, index)
    assert sorted(p.name for p in folder.iterdir()) == ["change.tif", "change_prob.tif"]  # nothing left beside
    head = (folder / "change.tif").read_bytes()[:200]
    assert int.from_bytes(head[4:8], "little") % 2 == 0  # the first directory on a word boundary, as TIFF wants
    assert b"LAYOUT=IFDS_BEFORE_DATA" in head


def test_a_cog_too_big_for_classic_tiff_is_written_as_bigtiff(tmp_path, monkeypatch):
    monkeypatch.setattr(cog_tiles, "CLASSIC_LIMIT", 1 << 16)  # as if the tiles took 4 GB
    prob = speckled(600, 700)
    folder, _, _ = cogs(tmp_path, prob, 512)
    assert (folder / "change_prob.tif").read_bytes()[:4] == b"II+\x00"
    valid, errors, _ = cog_validate(str(folder / "change_prob.tif"))
    assert valid, errors
    with rasterio.open(folder / "change_prob.tif") as cog, rasterio.open(folder / "change_prob.tif",
                                                                         overview_level=0) as overview:
        assert np.array_equal(cog.read(1), prob, equal_nan=True)
        assert np.array_equal(overview.read(1), mean_of_observed(prob), equal_nan=True)


def test_overviews_average_observed_pixels_and_keep_changes_in_sight():
    prob = np.array([[0.2, 0.4, np.nan],
                     [np.nan, 0.9, np.nan]], np.float32)
    assert np.allclose(mean_of_observed(prob), [[0.5, np.nan]], equal_nan=True)
    classes = np.array([[0, 1, 0, 0, 255],
                        [255, 255, 0, 1, 255]], np.uint8)
    assert majority_of_observed(classes).tolist() == [[1, 0, 255]]  # a tie is a change; none seen: not observed


def test_overview_means_of_fully_observed_pixels_are_numpys_float64_sums_to_the_bit():
    """Most blocks are observed everywhere and take a shorter way to their overviews than blocks
    with holes; both give numpy's own float64 sum of each 2 x 2 over its count of observed pixels."""
    rng = np.random.default_rng(7)
    for shape, scale in [((64, 96), 1.0), ((10, 14), 1e-38), ((8, 6), 3e38), ((9, 7), 1.0)]:
        prob = (rng.random(shape, dtype=np.float32) * np.float32(scale)).astype(np.float32)
        padded = np.pad(prob, ((0, shape[0] % 2), (0, shape[1] % 2)), constant_values=np.nan)
        quads = padded.reshape(padded.shape[0] // 2, 2, padded.shape[1] // 2, 2)
        expected = (np.nansum(quads, axis=(1, 3), dtype=np.float64)
                    / (~np.isnan(quads)).sum(axis=(1, 3))).astype(np.float32)
        assert np.array_equal(mean_of_observed(prob).view(np.uint32), expected.view(np.uint32)), (shape, scale)


def test_levels_lie_inside_blocks_only_where_blocks_span_whole_tiles_of_them():
    levels = Levels((8192, 8192), 2048)
    assert levels.factors == [2, 4, 8, 16]
    assert [levels.in_blocks(f) for f in levels.factors] == [True, True, False, False]
    assert Levels((513, 400), 512).factors == [2] and Levels((512, 512), 512).factors == []
    assert all(Levels((3000, 600), 4096).in_blocks(f) for f in (2, 4, 8))  # one block holds everything
