"""Written aside, renamed into place: an error leaves the old version and no stray file."""

from __future__ import annotations

import pytest

from flows.files.atomic import written_aside, write_text_atomic


def test_a_file_replaces_the_old_one_only_when_whole(tmp_path):
    target = tmp_path / "out" / "record.json"
    write_text_atomic(target, "old")
    with pytest.raises(OSError, match="disk"):
        with written_aside(target) as tmp:
            tmp.write_text("half of the ne")
            raise OSError("the disk is full")
    assert target.read_text() == "old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["record.json"]
    write_text_atomic(target, "new")
    assert target.read_text() == "new" and len(list(target.parent.iterdir())) == 1


def test_a_folder_appears_whole_and_keeps_its_suffix_free_name(tmp_path):
    target = tmp_path / "scenes.zarr"
    with written_aside(target) as tmp:
        assert tmp.suffix == ".zarr" and tmp.parent == tmp_path and tmp.name.startswith(".")
        tmp.mkdir()
        (tmp / "a").write_text("1")
    assert (target / "a").read_text() == "1"
    with pytest.raises(RuntimeError):
        with written_aside(target) as tmp:
            tmp.mkdir()
            (tmp / "b").write_text("2")
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scenes.zarr"] and (target / "a").exists()
    with written_aside(target, replace=False) as tmp:
        tmp.mkdir()
        (tmp / "c").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["a"]  # another writer's folder was there first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scenes.zarr"]
