"""Polygons and COGs from a probability mosaic whose changes are known exactly."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.features
import rasterio.windows
import scipy.ndimage
from rio_cogeo.cogeo import cog_validate
from shapely.geometry import Polygon, box

from flows.outputs.assemble import change_polygons, write_change_rasters
from flows.outputs.per_block import BackgroundWriter, BlockOutputs, OutputProcesses, children_worth_starting
from flows.blocks.store import ProbabilityStore
from flows.runtime.allocator import KEEP_FREED

from flows.blocks.lattice import plan_blocks

from tests.flows.flow_helpers import scenes_store

H, W = 1100, 1200


@pytest.fixture
def known(tmp_path):
    """A mosaic with: a rectangle across both block seams, a square with an unobserved core, two squares
    meeting only at a corner across a seam, one lonely pixel, and an unobserved strip."""
    scenes = scenes_store(tmp_path / "scenes.zarr", H, W)
    blocks = plan_blocks(H, W, 512)
    store = ProbabilityStore.prepare(tmp_path / "prob.zarr", scenes, (blocks[-1].row + 1, blocks[-1].col + 1), "k")
    prob = np.full((H, W), 0.1, np.float32)
    prob[500:530, 490:560] = 0.7
    prob[520, 540] = 0.99
    prob[100:110, 100:110] = 0.8
    prob[104:106, 104:106] = np.nan
    prob[1000:1012, 1012:1024] = 0.6  # ends at the block corner (1024, 1024) ...
    prob[1024:1030, 1024:1030] = 0.6  # ... where this one starts: a diagonal touch, two changes
    prob[50, 900] = 0.9
    prob[:, 1190:] = np.nan
    for block in blocks:
        store.write_block(block, prob[block.top:block.bottom, block.left:block.right])
    transform = scenes.rio.transform()
    return store, blocks, transform, prob


def block_outputs(store, transform, threshold: float, min_area_m2: float, block_size: int = 512) -> BlockOutputs:
    return BlockOutputs.prepare(store, "EPSG:32633", transform, block_size, threshold, min_area_m2)


def pixel_box(transform, rows: slice, cols: slice):
    x0, y0 = transform * (cols.start, rows.start)
    x1, y1 = transform * (cols.stop, rows.stop)
    return box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def test_changes_are_dissolved_across_block_seams_and_placed_exactly(known):
    store, blocks, transform, _ = known
    polygons = change_polygons(block_outputs(store, transform, 0.5, 0.0), blocks)
    assert polygons.crs.to_epsg() == 32633
    assert len(polygons) == 5
    big = polygons.iloc[0]
    assert big.geometry.equals(pixel_box(transform, slice(500, 530), slice(490, 560)))
    assert big.area_m2 == pytest.approx(30 * 70 * 0.25) and big.perimeter_m == pytest.approx(2 * (15 + 35))
    assert big.prob_max == pytest.approx(0.99)
    assert big.prob_mean == pytest.approx((0.7 * (30 * 70 - 1) + 0.99) / (30 * 70), rel=1e-5)
    assert big.observed_fraction == 1.0
    corners = polygons[polygons.geometry.intersects(pixel_box(transform, slice(1000, 1030), slice(1012, 1030)))]
    assert len(corners) == 2  # meeting at one corner is not one change (4-connectivity, as in the raster)


def test_an_unobserved_core_is_a_hole_and_lowers_the_observed_fraction(known):
    store, blocks, transform, _ = known
    polygons = change_polygons(block_outputs(store, transform, 0.5, 0.0), blocks)
    ring = polygons[polygons.geometry.intersects(pixel_box(transform, slice(100, 110), slice(100, 110)))].iloc[0]
    assert ring.area_m2 == pytest.approx(96 * 0.25)
    assert len(ring.geometry.interiors) == 1
    assert ring.observed_fraction == pytest.approx(0.96)


def test_min_area_and_threshold_filter_polygons(known):
    store, blocks, transform, _ = known
    kept = change_polygons(block_outputs(store, transform, 0.5, 1.0), blocks)
    assert len(kept) == 4 and kept["area_m2"].min() >= 1.0
    strict = change_polygons(block_outputs(store, transform, 0.75, 0.0), blocks)
    assert sorted(strict["area_m2"]) == pytest.approx([0.25, 0.25, 24.0])


def test_change_rasters_are_cogs_with_three_states(known, tmp_path):
    store, blocks, transform, prob = known
    outputs = block_outputs(store, transform, 0.5, 0.0)
    counts = write_change_rasters(outputs, blocks, tmp_path)
    for name in ("change.tif", "change_prob.tif"):
        valid, errors, _ = cog_validate(str(tmp_path / name))
        assert valid, errors
    with rasterio.open(tmp_path / "change.tif") as src:
        change = src.read(1)
        assert src.nodata == 255 and src.dtypes[0] == "uint8" and src.overviews(1) and src.transform == transform
        assert src.crs.to_epsg() == 32633 and src.block_shapes == [(512, 512)]
        assert src.colormap(1)[1] == (230, 30, 30, 255) and src.colormap(1)[255][:3] == (128, 128, 128)
        assert src.tags(1)["threshold"] == "0.5" and "not observed" in src.tags(1)["classes"]
    with rasterio.open(tmp_path / "change_prob.tif") as src:
        assert np.array_equal(src.read(1), prob, equal_nan=True)
        assert src.crs.to_epsg() == 32633 and src.transform == transform and np.isnan(src.nodata)
    assert (change[:, 1190:] == 255).all() and (change[104:106, 104:106] == 255).all()
    assert counts.changed_pixels == int((change == 1).sum()) == int((prob >= 0.5).sum())
    assert counts.observed_pixels == int((~np.isnan(prob)).sum())
    assert not list(tmp_path.glob(".*.tif"))  # the levels encoded at the end are gone


def test_a_block_whose_outputs_were_cut_off_is_made_again_and_other_parameters_never_mix_in(known, tmp_path):
    store, blocks, transform, prob = known
    outputs = block_outputs(store, transform, 0.5, 0.0)
    assert outputs.make_missing(blocks) == len(blocks) and outputs.make_missing(blocks) == 0
    cut = blocks[3]  # as if the run was killed while writing it: files half there, no marker
    outputs.path("marker", cut).unlink()
    outputs.path("prob", cut).write_bytes(b"II*\x00 cut off")
    outputs.path("pieces", cut).write_bytes(b"")
    assert outputs.done() == {b.name for b in blocks} - {cut.name}
    assert outputs.make_missing(blocks) == 1
    write_change_rasters(outputs, blocks, tmp_path)
    with rasterio.open(tmp_path / "change_prob.tif") as src:
        assert np.array_equal(src.read(1), prob, equal_nan=True)
    assert len(change_polygons(outputs, blocks)) == 5

    stricter = block_outputs(store, transform, 0.75, 0.0)
    assert stricter.folder != outputs.folder and stricter.done() == set()
    assert not Path(outputs.folder).exists()  # files made with another threshold are gone, not reused


def test_a_hole_that_closes_across_a_seam_keeps_the_island_inside_it_a_change_of_its_own(tmp_path):
    scenes = scenes_store(tmp_path / "scenes.zarr", 1024, 1024)
    blocks = plan_blocks(1024, 1024, 512)
    store = ProbabilityStore.prepare(tmp_path / "prob.zarr", scenes, (2, 2), "island")
    prob = np.full((1024, 1024), 0.1, np.float32)
    prob[100:140, 490:540] = 0.9  # a ring across the seam at column 512 ...
    prob[110:130, 500:530] = 0.1  # ... whose hole crosses the seam too
    prob[115:125, 508:516] = 0.8  # an island in the hole, across the seam
    for block in blocks:
        store.write_block(block, prob[block.top:block.bottom, block.left:block.right])
    polygons = change_polygons(block_outputs(store, scenes.rio.transform(), 0.5, 0.0), blocks)
    transform = scenes.rio.transform()
    ring = pixel_box(transform, slice(100, 140), slice(490, 540)).difference(
        pixel_box(transform, slice(110, 130), slice(500, 530)))
    assert len(polygons) == 2
    assert polygons.geometry.iloc[0].equals(ring) and polygons.prob_mean.iloc[0] == pytest.approx(0.9)
    assert polygons.geometry.iloc[1].equals(pixel_box(transform, slice(115, 125), slice(508, 516)))
    assert polygons.prob_mean.iloc[1] == pytest.approx(0.8)


def test_a_block_output_child_starts_without_the_loading_libraries():
    """Every run starts one or more of these children; odc-stac, xarray and dask, which loading
    needs and they do not, took a second of CPU to import at each start. Its imports are left out of
    the cycle collector's passes, and the collector is on for its blocks."""
    code = ("import gc, sys, flows.outputs.child; "
            "print(sorted(m for m in ('odc.stac', 'xarray', 'dask', 'torch') if m in sys.modules), "
            "gc.isenabled(), gc.get_freeze_count() > 10_000)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[] True True"


def test_block_output_children_keep_their_blocks_memory_unless_the_user_tunes_malloc(known, monkeypatch):
    """glibc reads its MALLOC_* settings from the environment at start: the children's must carry them."""
    store, _, transform, _ = known
    outputs = block_outputs(store, transform, 0.5, 0.0)

    def child_environment() -> dict[str, str]:
        with OutputProcesses(outputs, 1) as writer:
            raw = Path(f"/proc/{writer.children[0].pid}/environ").read_bytes()
        return dict(entry.split("=", 1) for entry in raw.decode().split("\0") if "=" in entry)

    for name in KEEP_FREED:
        monkeypatch.delenv(name, raising=False)
    assert ({k: v for k, v in child_environment().items() if k.startswith("MALLOC_")}
            == {name: str(value) for name, value in KEEP_FREED.items()})
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert child_environment()["MALLOC_MMAP_THRESHOLD_"] == "131072"


def test_child_processes_write_the_same_block_outputs_and_say_what_failed(known, tmp_path):
    store, blocks, transform, prob = known
    outputs = block_outputs(store, transform, 0.5, 0.0)
    with OutputProcesses(outputs, 1, drain=2) as writer:
        for block in blocks:
            writer.submit(block)
    assert len(writer.children) == 2  # the blocks still queued at the end were shared with a second child
    assert outputs.done() == {b.name for b in blocks} and outputs.make_missing(blocks) == 0
    write_change_rasters(outputs, blocks, tmp_path)
    with rasterio.open(tmp_path / "change_prob.tif") as src:
        assert np.array_equal(src.read(1), prob, equal_nan=True)
    assert len(change_polygons(outputs, blocks)) == 5

    broken = block_outputs(store, transform, 0.6, 0.0)
    shutil.rmtree(Path(broken.folder) / "prob")
    (Path(broken.folder) / "prob").write_text("a file where the block GeoTIFFs go")
    with pytest.raises(NotADirectoryError) as failed:  # the child's OS error, as the flow explains them
        with OutputProcesses(broken, 1) as writer:
            writer.submit(blocks[0])
    assert failed.value.filename == str(Path(broken.folder) / "prob" / "block-0-0.tif")
    assert broken.done() == set()


@pytest.mark.parametrize("writer_kind", ["processes", "threads"])
def test_once_a_blocks_outputs_failed_the_next_block_raises_its_error(known, writer_kind):
    """Not only after the last block: a run of hundreds of blocks stops at the first failed share."""
    store, blocks, transform, _ = known
    broken = block_outputs(store, transform, 0.7, 0.0)
    shutil.rmtree(Path(broken.folder) / "prob")
    (Path(broken.folder) / "prob").write_text("a file where the block GeoTIFFs go")
    writer = OutputProcesses(broken, 1) if writer_kind == "processes" else BackgroundWriter(broken, 1)
    with pytest.raises(NotADirectoryError), writer:
        writer.submit(blocks[0])
        deadline = time.monotonic() + 60
        while not writer.errors and time.monotonic() < deadline:
            time.sleep(0.05)
        assert writer.errors, "the first block's outputs did not fail"
        writer.submit(blocks[1])
        pytest.fail("the block after a failed one was queued")
    assert broken.done() == set()


def test_blocks_queued_at_the_end_are_written_in_this_process_too(known, tmp_path):
    """Once the last block is inferred, the flow's process has its cores and its GIL back and
    writes queued blocks beside the child, with nothing to start; here the child is still importing."""
    store, blocks, transform, prob = known
    outputs = block_outputs(store, transform, 0.5, 0.0)
    with OutputProcesses(outputs, 1, drain=1) as writer:
        for block in blocks:
            writer.submit(block)
    assert len(writer.children) == 1 and writer.written_here
    assert outputs.done() == {b.name for b in blocks}
    write_change_rasters(outputs, blocks, tmp_path)
    with rasterio.open(tmp_path / "change_prob.tif") as src:
        assert np.array_equal(src.read(1), prob, equal_nan=True)
    assert len(change_polygons(outputs, blocks)) == 5


def test_more_children_only_for_queued_blocks_worth_their_start():
    assert children_worth_starting(5, 1, 1, []) == 1  # nothing written yet: the blocks' cost is unknown
    assert children_worth_starting(5, 1, 1, [0.3, 0.35]) == 0  # 1.6 s of work for a child that costs 1 s to start
    assert children_worth_starting(5, 3, 1, [2.5]) == 3  # 12.5 s of work: as many as there is room for
    assert children_worth_starting(5, 8, 0, [0.8]) == 2  # 4 s and none running: two children of 2 s each
    # the same 4 s with one child running: it writes 1 s while another starts, and 3 s for two is too little
    assert children_worth_starting(5, 8, 1, [0.8]) == 0
    assert children_worth_starting(5, 8, 1, [1.4]) == 2  # 7 s: 1 s by the running child, 2 s each for three
    assert children_worth_starting(0, 4, 0, [9.0]) == 0 and children_worth_starting(3, 0, 0, []) == 0
    assert children_worth_starting(5, 3, 1, [0.8], start_cpu_s=[0.4, 0.6]) == 2  # children that start in 0.5 s
    # the end of an 8192² run: seven clean blocks left for one child that started in 0.65 s
    assert children_worth_starting(7, 1, 1, [0.25], start_cpu_s=[0.65]) == 0


def test_blocks_that_cost_less_than_a_child_s_start_are_left_to_the_running_child(known):
    store, blocks, transform, _ = known
    outputs = block_outputs(store, transform, 0.5, 0.0)
    with OutputProcesses(outputs, 1, drain=2) as writer:
        writer.submit(blocks[0])
        deadline = time.monotonic() + 120
        while not writer.block_cpu_s and time.monotonic() < deadline:  # its cost is known from here on
            time.sleep(0.05)
        # a 512 x 512 block's outputs take less than the child's import, so two are not worth a second child
        assert writer.block_cpu_s and writer.start_cpu_s and writer.block_cpu_s[0] < writer.start_cpu_s[0]
        for block in blocks[1:3]:
            writer.submit(block)
    assert len(writer.children) == 1
    assert outputs.done() == {b.name for b in blocks[:3]}


def wait_for_blocks_written(writer: OutputProcesses, count: int) -> None:
    deadline = time.monotonic() + 120
    while len(writer.block_cpu_s) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(writer.block_cpu_s) == count


def test_one_output_child_while_it_keeps_pace(known):
    store, blocks, transform, _ = known
    outputs = block_outputs(store, transform, 0.5, 0.0)
    with OutputProcesses(outputs, 3, drain=3) as writer:
        assert len(writer.children) == 1
        for k, block in enumerate(blocks, start=1):  # each block written before the next comes
            writer.submit(block)
            wait_for_blocks_written(writer, k)
        assert len(writer.children) == 1
    assert len(writer.children) == 1 and outputs.done() == {b.name for b in blocks}


def test_more_output_children_for_a_backlog_worth_them(tmp_path):
    store, blocks, transform, _ = noisy_mosaic(tmp_path, size=3072)
    outputs = block_outputs(store, transform, 0.6, 2.0)
    with OutputProcesses(outputs, 3, drain=3) as writer:
        writer.submit(blocks[0])
        wait_for_blocks_written(writer, 1)
        for block in blocks[1:]:  # 35 speckled blocks at once: seconds of work for one child
            writer.submit(block)
        assert len(writer.children) == 3
    assert outputs.done() == {b.name for b in blocks}


def noisy_mosaic(tmp_path, size: int = 1024, seed: int = 3):
    """A speckled map over four blocks: regions with holes, islands in the holes, unobserved patches."""
    scenes = scenes_store(tmp_path / "scenes.zarr", size, size)
    blocks = plan_blocks(size, size, 512)
    store = ProbabilityStore.prepare(tmp_path / "prob.zarr", scenes, (blocks[-1].row + 1, blocks[-1].col + 1), "noisy")
    rng = np.random.default_rng(seed)
    coarse = rng.random((size // 16, size // 16)).astype(np.float32)
    prob = np.kron(coarse, np.ones((16, 16), np.float32)) * 0.7 + rng.random((size, size), np.float32) * 0.3
    prob[rng.random((size, size)) < 0.002] = np.nan
    prob[300:340, 700:900] = np.nan
    prob[0:4, :] = np.nan
    for block in blocks:
        store.write_block(block, prob[block.top:block.bottom, block.left:block.right])
    return store, blocks, scenes.rio.transform(), prob


def test_polygon_statistics_match_a_pixel_by_pixel_reference_on_a_noisy_map(tmp_path):
    """Every polygon, rasterised back on its own, covers exactly the pixels its statistics claim."""
    store, blocks, transform, prob = noisy_mosaic(tmp_path)
    polygons = change_polygons(block_outputs(store, transform, 0.6, 2.0), blocks)
    changed = ~np.isnan(prob) & (prob >= 0.6)
    assert len(polygons) > 50 and sum(len(g.interiors) for g in polygons.geometry) > 50  # holes and seams aplenty
    assert polygons.geometry.is_valid.all()
    covered = np.zeros(prob.shape, np.int32)
    for row in polygons.itertuples():
        window = rasterio.windows.from_bounds(*row.geometry.bounds, transform).round_offsets().round_lengths()
        rows, cols = window.toslices()
        here = rasterio.windows.transform(window, transform)
        inside = rasterio.features.geometry_mask([row.geometry], (window.height, window.width), here, invert=True)
        outline = rasterio.features.geometry_mask([Polygon(row.geometry.exterior)], inside.shape, here, invert=True)
        values = prob[rows, cols]
        assert changed[rows, cols][inside].all()
        assert row.area_m2 == pytest.approx(inside.sum() * 0.25)
        assert row.prob_mean == pytest.approx(values[inside].mean(), rel=1e-5)
        assert row.prob_max == pytest.approx(values[inside].max())
        assert row.observed_fraction == pytest.approx((~np.isnan(values[outline])).mean())
        covered[rows, cols] += inside
    assert covered.max() == 1  # no pixel in two polygons: the seams were dissolved
    regions, _ = scipy.ndimage.label(changed)  # 4-connected by default
    small = np.bincount(regions.ravel())[regions] < 8
    assert np.array_equal(changed & ~covered.astype(bool), changed & small)  # left out: exactly those under 2 m2
