"""Which errors say that a run's cache is damaged, and which are something else."""

from __future__ import annotations

import errno

import numpy as np
import pytest
import zarr

from flows.runtime.damaged_cache import DamagedCache, is_damaged_store, said_if_damaged


def test_a_child_process_message_about_an_undecodable_chunk_is_damage():
    passed_on = RuntimeError("writing the outputs of block-0-0 failed: error during blosc decompression: -1")
    assert is_damaged_store(passed_on)


def test_a_missing_array_read_by_zarr_is_damage_and_a_keyerror_elsewhere_is_a_bug(tmp_path):
    group = zarr.open_group(tmp_path / "s.zarr", mode="w")
    with pytest.raises(KeyError) as missing:
        group["image"]
    assert is_damaged_store(missing.value)
    with pytest.raises(KeyError) as bug:
        {}["image"]
    assert not is_damaged_store(bug.value)


def test_a_full_disk_inside_zarr_keeps_its_own_line(tmp_path):
    full = OSError(errno.ENOSPC, "No space left on device")
    try:
        try:
            zarr.open_array(tmp_path / "a.zarr", mode="w", shape=(4,), dtype="u1")["x"] = np.zeros(4)
        except Exception as err:  # an error raised inside zarr
            raise full from err
    except OSError as err:
        assert not is_damaged_store(err)


def test_the_line_names_the_folder_and_the_fix(tmp_path):
    with pytest.raises(DamagedCache) as said:
        with said_if_damaged(tmp_path / "cache" / "spot"):
            raise RuntimeError("error during blosc decompression: -1")
    assert str(said.value) == (f"the run's cache {tmp_path / 'cache' / 'spot'} is damaged (RuntimeError: error during "
                               "blosc decompression: -1): remove that folder and run again, which computes it afresh")
    with pytest.raises(ValueError, match="not about the cache"), said_if_damaged(tmp_path):
        raise ValueError("not about the cache")
