"""The window lattice, reflect padding, blending and stitching: seamless, each window run once, and
independent of how the scene is cut."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from dsqnet.inference.blend import window_weight
from dsqnet.inference.lattice import Lattice, reflect_index, take_runs
from flows.blocks.infer import BlockInputs, BlockJob, block_window_sums, process_block, read_block
from flows.blocks.store import ProbabilityStore
from flows.blocks.stitch import Stitcher, stitch
from flows.blocks.lattice import block_reach, block_windows, plan_blocks
from flows.workers.cluster import cached_predictor
from tests.flows.flow_helpers import content_model, scenes_store, tiny_model_file


def run_blocks(tmp_path, scenes, block_size: int, run, window: int, stride: int, batch_size: int = 8) -> np.ndarray:
    height, width = scenes.sizes["y"], scenes.sizes["x"]
    blocks = plan_blocks(height, width, block_size)
    store = ProbabilityStore.prepare(tmp_path / f"prob_{block_size}.zarr", scenes,
                                     (blocks[-1].row + 1, blocks[-1].col + 1), f"k{block_size}")
    job = BlockJob(str(tmp_path / "scenes.zarr"), str(store.path), "", "", window, stride, batch_size)
    for block in reversed(blocks):  # any order
        process_block(job, block, run)
    assert store.summed_blocks() == {(b.row, b.col) for b in blocks}
    assert stitch(store, job.scenes, Lattice(height, width, window, stride), blocks) == len(blocks)
    assert store.done_blocks() == {(b.row, b.col) for b in blocks}
    return np.asarray(store.probability()[:])


@pytest.mark.parametrize("length", [1, 2, 5, 37])
def test_reflect_index_matches_numpy_reflect_padding_at_any_distance(length):
    pad = 3 * length + 4
    expected = np.pad(np.arange(length), pad, mode="reflect") if length > 1 else np.zeros(length + 2 * pad, int)
    assert (reflect_index(np.arange(-pad, length + pad), length) == expected).all()


@pytest.mark.parametrize("length", [1, 2, 3, 37, 300])
def test_mirrored_reads_copied_by_runs_equal_numpy_take(length):
    rng = np.random.default_rng(length)
    image = rng.integers(0, 256, (2, 3, length, length), dtype=np.uint8)
    reaches = [(-5, 4), (-400, 10), (-3, length + 3), (length - 10, length + 600), (0, length), (length - 1, length)]
    indexes = [reflect_index(np.arange(lo, hi), length) for lo, hi in reaches]
    indexes += [rng.integers(0, length, 50), np.array([length - 1]), np.zeros(0, int), np.zeros(4, int)]
    for index in indexes:
        for axis in (2, 3):
            np.testing.assert_array_equal(take_runs(image, index, axis), np.take(image, index, axis=axis))


def test_window_cells_tile_the_scene_and_every_window_has_exactly_one_block():
    lattice = Lattice(1000, 700, window=512, stride=256)
    starts = lattice.starts(1000)
    cells = np.concatenate([np.arange(s + lattice.margin, s + lattice.margin + 256) for s in starts])
    assert (cells[:1000] == np.arange(1000)).all()
    blocks = plan_blocks(1000, 700, 512)
    owned = [w for block in blocks for w in block_windows(lattice, block)]
    assert sorted(owned) == sorted((int(t), int(c)) for t in starts for c in lattice.starts(700))
    assert len(owned) == len(set(owned)) == lattice.count
    block = blocks[3]  # rows 512..1000, cols 512..700: owns the cells starting at 512, 768 by 512
    assert block_windows(lattice, block) == [(384, 384), (640, 384)]
    reach = block_reach(lattice, block)
    assert (reach.top, reach.bottom, reach.left, reach.right) == (384, 1152, 384, 896)


def test_weights_cross_fade_to_exactly_one_at_half_window_stride():
    w = window_weight(64)
    assert w.min() > 0
    # the four windows that overlap a 32-px cell weigh it with the four quadrants of w
    assert np.allclose(w[:32, :32] + w[32:, :32] + w[:32, 32:] + w[32:, 32:], 1.0, atol=1e-6)


def test_blending_is_the_same_for_any_block_size_and_order(tmp_path):
    scenes = scenes_store(tmp_path / "scenes.zarr", 1300, 900, hole=(slice(0, 100), slice(0, 150)))
    results = [run_blocks(tmp_path, scenes, size, content_model, 256, 128) for size in (512, 1024, 2048)]
    # the same windows and weights everywhere; only the order of float32 additions across seams differs
    for other in results[1:]:
        assert np.array_equal(np.isnan(results[0]), np.isnan(other))
        assert np.nanmax(np.abs(results[0] - other)) < 1e-6
    observed = ~np.isnan(results[0])
    assert not observed[:100, :150].any() and observed[100:].all() and observed[:, 150:].all()


def test_each_block_is_stitched_once_the_blocks_reaching_into_it_are_in_and_the_map_is_the_same(tmp_path):
    scenes = scenes_store(tmp_path / "scenes.zarr", 1536, 1536)
    expected = run_blocks(tmp_path, scenes, 512, content_model, 256, 128)  # all blocks summed, then stitched
    blocks = plan_blocks(1536, 1536, 512)  # 3 x 3; windows of 256 at stride 128 reach 64 px past a block
    store = ProbabilityStore.prepare(tmp_path / "eager.zarr", scenes, (3, 3), "eager")
    job = BlockJob(str(tmp_path / "scenes.zarr"), str(store.path), "", "", 256, 128, 8)
    told = []  # what the stitcher tells the block outputs' writer, each block as it is stitched
    stitcher = Stitcher(store, job.scenes, Lattice(1536, 1536, 256, 128), blocks,
                        on_stitched=lambda b: told.append(((b.row, b.col), (b.row, b.col) in store.done_blocks())))
    stitched = []
    for block in blocks:  # row-major, as blocks may finish
        process_block(job, block, content_model)
        stitched.append([(b.row, b.col) for b in stitcher.add(block)])
    # a block waits for every neighbour, diagonals included, whose windows reach into it
    assert stitched == [[], [], [], [], [(0, 0)], [(0, 1), (0, 2)], [], [(1, 0), (2, 0)],
                        [(1, 1), (1, 2), (2, 1), (2, 2)]]
    assert store.done_blocks() == {(b.row, b.col) for b in blocks}
    assert told == [(done, True) for done in sum(stitched, [])]  # once each, and only once in the store
    assert stitch(store, job.scenes, Lattice(1536, 1536, 256, 128), blocks) == 0  # nothing left for the stitch step
    assert np.array_equal(np.asarray(store.probability()[:]), expected, equal_nan=True)


def test_a_constant_network_gives_a_constant_map_up_to_the_edges(tmp_path):
    scenes = scenes_store(tmp_path / "scenes.zarr", 300, 530)  # smaller than a window, not a multiple of the stride
    prob = run_blocks(tmp_path, scenes, 512, lambda a, b: torch.full((a.shape[0], *a.shape[2:]), 0.25), 512, 256)
    assert prob.shape == (300, 530)
    assert np.allclose(prob, 0.25, atol=1e-6)


def test_reflect_padding_feeds_mirrored_pixels_at_the_scene_edge(tmp_path):
    scenes = scenes_store(tmp_path / "scenes.zarr", 300, 400)
    lattice = Lattice(300, 400, 256, 128)
    block = plan_blocks(300, 400, 512)[0]
    inputs = read_block(zarr.open_group(str(tmp_path / "scenes.zarr")), lattice, block)
    image = np.asarray(scenes["image"][0])
    reach = inputs.reach
    assert inputs.before.shape[1:] == reach.shape
    expected = np.pad(image, ((0, 0), (-reach.top, reach.bottom - 300), (-reach.left, reach.right - 400)), mode="reflect")
    assert reach.top < 0 and reach.bottom > 300 and (inputs.before == expected).all()
    # outside the scene nothing is observed, whatever the mirrored pixels show
    assert not inputs.observed[:-reach.top].any() and inputs.observed[-reach.top:300 - reach.top, -reach.left:400 - reach.left].all()


def test_block_sizes_agree_with_the_real_network(tmp_path):
    scenes = scenes_store(tmp_path / "scenes.zarr", 1100, 600, hole=(slice(900, 1100), slice(0, 200)))
    model = tiny_model_file(tmp_path / "tiny.safetensors")
    run = cached_predictor(str(model), "test", "fp32", "cpu", None).predict_proba
    whole, halves, quarters = (run_blocks(tmp_path, scenes, size, run, 128, 64, batch_size=16)
                               for size in (1536, 1024, 512))
    assert np.isnan(whole[900:, :200]).all() and not np.isnan(whole[:900]).any()
    assert np.nanmax(np.abs(whole - halves)) < 1e-5
    assert np.nanmax(np.abs(whole - quarters)) < 1e-5
    assert np.nanstd(whole) > 1e-4  # a real map, not a constant


def test_window_sums_run_each_owned_window_once_in_batches():
    lattice = Lattice(600, 600, 128, 64)
    block = plan_blocks(600, 600, 512)[0]
    calls = []

    def counting(before, after):
        calls.append(len(before))
        return torch.ones((len(before), 128, 128))

    reach = block_reach(lattice, block)
    inputs = BlockInputs(np.zeros((3, *reach.shape), np.uint8), np.zeros((3, *reach.shape), np.uint8), reach,
                         np.ones(reach.shape, bool))
    windows = block_windows(lattice, block)
    sums = block_window_sums(counting, inputs, lattice, windows, batch_size=7)
    assert sum(calls) == len(windows) == 8 * 8 and max(calls) == 7
    # the reach runs from 32 px before the scene to 32 px into the next block; over scene rows
    # 32..480 two owned windows per axis cross-fade to a total weight of exactly one
    assert (reach.top, reach.bottom, reach.left, reach.right) == (-32, 544, -32, 544)
    assert np.allclose(sums[64:512, 64:512], 1.0, atol=1e-5)
    assert sums[-32:, -32:].max() < 0.5  # where the next block's windows would fade in


def test_windows_that_see_nothing_observed_are_not_run(tmp_path):
    # the after date is missing over the whole first block column: its windows are skipped, except
    # those reaching across the seam into observed pixels
    scenes = scenes_store(tmp_path / "scenes.zarr", 512, 1024, hole=(slice(0, 512), slice(0, 512)))
    runs = []

    def counting(before, after):
        runs.append(len(before))
        return content_model(before, after)

    prob = run_blocks(tmp_path, scenes, 512, counting, 128, 64)
    lattice = Lattice(512, 1024, 128, 64)
    # windows reach 32 px before their cell and 32 after: in the first block column only the cells
    # starting at 448 reach col 512
    assert sum(runs) == lattice.count - 8 * 7
    assert np.isnan(prob[:, :512]).all() and not np.isnan(prob[:, 512:]).any()


def test_stopped_blocks_stop_before_their_next_batch_and_a_new_run_clears_the_stop(tmp_path):
    """A failed run stops its blocks (flows/blocks/infer.py ``stop_blocks``): those of this process
    even where the marker cannot be written, and a block that starts later before it reads anything."""
    from flows.blocks.infer import BlockStopped, clear_stop, stop_blocks, stop_marker

    scenes = scenes_store(tmp_path / "scenes.zarr", 256, 256)
    block = plan_blocks(256, 256, 128)[0]
    store = ProbabilityStore.prepare(tmp_path / "prob.zarr", scenes, (2, 2), "stop")
    job = BlockJob(str(tmp_path / "scenes.zarr"), str(store.path), "", "", 64, 32, 2)
    batches, stop_after = [], [2]

    def run(before, after):
        batches.append(len(before))
        if len(batches) == stop_after[0]:  # the run failed meanwhile
            stop_blocks(job, timeout_s=0)
        return content_model(before, after)

    with pytest.raises(BlockStopped, match="block-0-0 stopped"):
        process_block(job, block, run)
    assert len(batches) == 2 and stop_marker(job).exists()  # stopped before its third batch
    assert store.summed_blocks() == set()  # and stored nothing

    unwritable = BlockJob(job.scenes, str(tmp_path / "gone" / "prob.zarr"), "", "", 64, 32, 2)
    stop_blocks(unwritable, timeout_s=0)  # the marker's folder is missing: this process's blocks still stop
    assert not stop_marker(unwritable).exists()
    with pytest.raises(BlockStopped):
        process_block(unwritable, block, run)

    clear_stop(job)
    stop_after[0] = 0  # this time nothing stops the block
    assert process_block(job, block, run).windows == 16 and not stop_marker(job).exists()
    assert store.summed_blocks() == {(0, 0)}
