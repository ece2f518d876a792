"""The window lattice, reflect padding and blending: seamless and independent of how the scene is cut."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from flows.block_inference import BlockJob, blend_block, process_block, read_block
from flows.probability_store import ProbabilityStore
from flows.tiling import Lattice, block_windows, plan_blocks, reflect_index, window_weight
from flows.workers import window_model
from tests.flows.flow_helpers import content_model, scenes_store, tiny_model_file


def run_blocks(tmp_path, scenes, block_size: int, run, window: int, stride: int, batch_size: int = 8) -> np.ndarray:
    height, width = scenes.sizes["y"], scenes.sizes["x"]
    blocks = plan_blocks(height, width, block_size)
    store = ProbabilityStore.prepare(tmp_path / f"prob_{block_size}.zarr", scenes,
                                     (blocks[-1].row + 1, blocks[-1].col + 1), f"k{block_size}")
    job = BlockJob(str(tmp_path / "scenes.zarr"), str(store.path), "", "", window, stride, batch_size)
    for block in reversed(blocks):  # any order
        process_block(job, block, run)
    assert store.done_blocks() == {(b.row, b.col) for b in blocks}
    return np.asarray(store.probability()[:])


@pytest.mark.parametrize("length", [1, 2, 5, 37])
def test_reflect_index_matches_numpy_reflect_padding_at_any_distance(length):
    pad = 3 * length + 4
    expected = np.pad(np.arange(length), pad, mode="reflect") if length > 1 else np.zeros(length + 2 * pad, int)
    assert (reflect_index(np.arange(-pad, length + pad), length) == expected).all()


def test_window_centres_tile_the_scene_and_every_window_touching_a_block_is_run():
    lattice = Lattice(1000, 700, window=512, stride=256)
    starts = lattice.starts(1000)
    centres = np.concatenate([np.arange(s + lattice.margin, s + lattice.margin + 256) for s in starts])
    assert (centres[:1000] == np.arange(1000)).all()
    block = plan_blocks(1000, 700, 512)[3]  # rows 512..1000, cols 512..700
    wins = block_windows(lattice, block)
    assert all(t < block.bottom and t + 512 > block.top and c < block.right and c + 512 > block.left for t, c in wins)
    assert len(wins) == 3 * 2


def test_weights_cross_fade_to_exactly_one_at_half_window_stride():
    w = window_weight(64)
    assert w.min() > 0
    # the four windows that overlap a 32-px cell weigh it with the four quadrants of w
    assert np.allclose(w[:32, :32] + w[32:, :32] + w[:32, 32:] + w[32:, 32:], 1.0, atol=1e-6)


def test_blending_is_identical_for_any_block_size_and_order(tmp_path):
    scenes = scenes_store(tmp_path / "scenes.zarr", 1300, 900, hole=(slice(0, 100), slice(0, 150)))
    results = [run_blocks(tmp_path, scenes, size, content_model, 256, 128) for size in (512, 1024, 2048)]
    assert np.array_equal(results[0], results[1], equal_nan=True)
    assert np.array_equal(results[0], results[2], equal_nan=True)
    observed = ~np.isnan(results[0])
    assert not observed[:100, :150].any() and observed[100:].all() and observed[:, 150:].all()


def test_a_constant_network_gives_a_constant_map_up_to_the_edges(tmp_path):
    scenes = scenes_store(tmp_path / "scenes.zarr", 300, 530)  # smaller than a window, not a multiple of the stride
    prob = run_blocks(tmp_path, scenes, 512, lambda a, b: np.full(a.shape[:1] + a.shape[2:], 0.25, np.float32), 512, 256)
    assert prob.shape == (300, 530)
    assert np.allclose(prob, 0.25, atol=1e-6)


def test_reflect_padding_feeds_mirrored_pixels_at_the_scene_edge(tmp_path):
    scenes = scenes_store(tmp_path / "scenes.zarr", 300, 400)
    lattice = Lattice(300, 400, 256, 128)
    block = plan_blocks(300, 400, 512)[0]
    inputs = read_block(zarr.open_group(str(tmp_path / "scenes.zarr")), lattice, block)
    image = np.asarray(scenes["image"][0])
    rows = np.arange(inputs.top, inputs.top + inputs.before.shape[1])
    cols = np.arange(inputs.left, inputs.left + inputs.before.shape[2])
    expected = np.pad(image, ((0, 0), (-inputs.top, rows[-1] - 299), (-inputs.left, cols[-1] - 399)), mode="reflect")
    assert inputs.top < 0 and (inputs.before == expected).all()


def test_block_sizes_agree_with_the_real_network(tmp_path):
    scenes = scenes_store(tmp_path / "scenes.zarr", 1100, 600, hole=(slice(900, 1100), slice(0, 200)))
    model = tiny_model_file(tmp_path / "tiny.safetensors")
    run = window_model(str(model), "test", "fp32", "cpu")
    whole, halves, quarters = (run_blocks(tmp_path, scenes, size, run, 128, 64, batch_size=16)
                               for size in (1536, 1024, 512))
    assert np.isnan(whole[900:, :200]).all() and not np.isnan(whole[:900]).any()
    assert np.nanmax(np.abs(whole - halves)) < 1e-5
    assert np.nanmax(np.abs(whole - quarters)) < 1e-5
    assert np.nanstd(whole) > 1e-4  # a real map, not a constant


def test_blend_uses_only_the_windows_that_touch_the_block():
    lattice = Lattice(600, 600, 128, 64)
    block = plan_blocks(600, 600, 512)[0]
    calls = []

    def counting(before, after):
        calls.append(len(before))
        return np.zeros((len(before), 128, 128), np.float32)

    inputs_shape = (3, 128 * 10, 128 * 10)
    from flows.block_inference import BlockInputs
    inputs = BlockInputs(np.zeros(inputs_shape, np.uint8), np.zeros(inputs_shape, np.uint8), -32, -32,
                         np.ones(block.shape, bool))
    blend_block(counting, inputs, lattice, block, batch_size=7)
    assert sum(calls) == len(block_windows(lattice, block)) == 9 * 9
    assert max(calls) == 7
