"""preview.png pasted together from the blocks' samples: the same picture whatever the blocks."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from PIL import Image

from flows.outputs.assemble import write_preview
from flows.outputs.per_block import BlockOutputs
from flows.outputs.preview import CHANGED_RGB, NOT_OBSERVED_RGB, PANEL, preview_step
from flows.blocks.store import ProbabilityStore
from flows.blocks.lattice import plan_blocks
from tests.flows.flow_helpers import scenes_store

# 1700 columns: every third pixel is kept, and blocks of 512 start at offsets 512 % 3 = 2 and 1024 % 3 = 1
H, W = 1300, 1700
THRESHOLD = 0.5


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    folder = tmp_path_factory.mktemp("preview")
    scenes = scenes_store(folder / "scenes.zarr", H, W, hole=(slice(900, 1000), slice(100, 400)))
    # changes in bands a few pixels wide, so that sampling every third pixel catches some and misses some
    rows, cols = np.mgrid[:H, :W]
    probability = (0.5 + 0.5 * np.sin((rows + 2 * cols) / 7.0)).astype(np.float32)
    probability[900:1000, 100:400] = np.nan
    return folder, scenes, probability


def preview_of(scene, block_size: int) -> np.ndarray:
    folder, scenes, probability = scene
    blocks = plan_blocks(H, W, block_size)
    store = ProbabilityStore.prepare(folder / f"prob_{block_size}.zarr", scenes,
                                     (blocks[-1].row + 1, blocks[-1].col + 1), f"p{block_size}")
    for block in blocks:
        store.write_block(block, probability[block.top:block.bottom, block.left:block.right])
    outputs = BlockOutputs.prepare(store, "EPSG:32633", scenes.rio.transform(), block_size, THRESHOLD, 0.0,
                                   scenes=folder / "scenes.zarr")
    outputs.make_missing(blocks)  # each block's share, its preview samples among them
    out = folder / f"preview_{block_size}.png"
    write_preview(outputs, blocks, ("2021-06-10", "2023-06-12"), out)
    return np.asarray(Image.open(out).convert("RGB"))


def test_the_preview_samples_the_whole_scene_at_one_step(scene):
    """Compared with the panels read from the whole scene at once, as the preview was made before."""
    folder, _, probability = scene
    step = preview_step((H, W))
    assert step == 3 and 512 % step and 1024 % step  # the blocks start between kept columns
    image = zarr.open_group(str(folder / "scenes.zarr"), mode="r")["image"]
    before, after = (np.asarray(image[k, :, ::step, ::step]).transpose(1, 2, 0) for k in (0, 1))
    sampled = probability[::step, ::step]
    overlay = (after.astype(np.float32) * 0.55).astype(np.uint8)
    overlay[np.isnan(sampled)] = NOT_OBSERVED_RGB
    overlay[sampled >= THRESHOLD] = CHANGED_RGB

    picture = preview_of(scene, 512)
    rows, cols = before.shape[:2]
    assert max(rows, cols) <= PANEL and picture.shape == (rows + 18, 3 * cols + 16, 3)
    for k, panel in enumerate((before, after, overlay)):
        np.testing.assert_array_equal(picture[18:, k * (cols + 8):k * (cols + 8) + cols], panel, err_msg=f"panel {k}")


def test_the_preview_does_not_depend_on_the_block_size(scene):
    np.testing.assert_array_equal(preview_of(scene, 512), preview_of(scene, 2048))
