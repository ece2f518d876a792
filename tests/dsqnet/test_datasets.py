"""Readers for the benchmarks' folder layouts and label conventions, on small real folders."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dsqnet.data import ChangeDetectionDataset, DatasetError, find_samples
from dsqnet.data.dataset import label_encoding_for
from tests.dsqnet.datasets_helpers import write_split


def load_all(root, layout, split=None):
    samples = find_samples(root, layout, split)
    dataset = ChangeDetectionDataset(samples, label_encoding_for(layout, samples))
    return samples, [dataset[i] for i in range(len(dataset))]


@pytest.mark.parametrize(
    "layout, folders, suffixes",
    [
        ("levir-cd", ("A", "B", "label"), (".png", ".png")),
        ("s2looking", ("Image1", "Image2", "label"), (".png", ".png")),
        ("s2looking", ("A", "B", "OUT"), (".png", ".png")),  # the DSQNet authors' re-organisation
        ("svcd", ("A", "B", "OUT"), (".jpg", ".jpg")),
        ("dsifn", ("t1", "t2", "mask"), (".jpg", ".png")),
        ("dsifn", ("t1", "t2", "mask"), (".jpg", ".tif")),  # DSIFN's test masks are TIFFs
    ],
)
def test_benchmark_layouts_read_pairs_and_binary_labels(tmp_path, layout, folders, suffixes):
    write_split(tmp_path / "test", ["b", "a", "c"], folders=folders, suffixes=suffixes)
    samples, items = load_all(tmp_path, layout, "test")
    assert [s.name for s in samples] == ["a", "b", "c"]  # sorted by name, paired by name
    for item in items:
        assert item["before"].shape == (96, 96, 3) and item["before"].dtype == np.uint8
        assert set(np.unique(item["label"])) == {0, 1}  # 0/255 (even JPEG-blurred) -> 0/1
        assert 400 <= item["label"].sum() <= 700  # the 24 x 24 square, give or take JPEG edges


def test_generic_layout_with_zero_one_labels_reads_255_as_ignore(tmp_path):
    write_split(tmp_path, ["x", "y"], label_scale=1)
    label = np.array(Image.open(tmp_path / "label" / "x.png"))
    label[:5] = 255
    Image.fromarray(label).save(tmp_path / "label" / "x.png")
    _, items = load_all(tmp_path, "generic")
    assert set(np.unique(items[0]["label"])) == {0, 1, 255}
    assert (items[0]["label"][:5] == 255).all()


def test_labels_that_mix_the_two_encodings_are_refused_naming_both_kinds(tmp_path):
    """One stray 1 in a 0/255 set turned the whole set to 0/1, where 255 means ignored: every changed
    pixel of the 0/255 labels was dropped, and evaluate scored F1 nan with exit 0."""
    write_split(tmp_path, ["x", "y"])  # 0/255
    label = np.array(Image.open(tmp_path / "label" / "x.png"))
    label[0, 0] = 1  # a label from another source, 0/1
    Image.fromarray(label).save(tmp_path / "label" / "x.png")
    with pytest.raises(DatasetError) as refused:
        load_all(tmp_path, "generic")
    assert str(refused.value) == (
        f"the labels mix two encodings: 1 ({tmp_path / 'label' / 'x.png'}) hold 1 (0/1 labels, where 255 means "
        f"ignored), 1 ({tmp_path / 'label' / 'y.png'}) hold 255 and no 1 (0/255 labels, where 255 means changed); "
        "convert them to one encoding, or name it: zero-one or threshold (--label-encoding; label_encoding in a "
        "flow's parameters or in a training config's data)")
    samples = find_samples(tmp_path, "generic")
    named = ChangeDetectionDataset(samples, "threshold")  # the way on: the encoding named
    assert [int(named[i]["label"].sum()) for i in range(2)] == [int((np.array(Image.open(s.label)) >= 128).sum())
                                                               for s in samples]


def test_generic_layout_with_zero_255_labels(tmp_path):
    write_split(tmp_path, ["x"])
    _, items = load_all(tmp_path, "generic")
    assert set(np.unique(items[0]["label"])) == {0, 1}


def test_list_files_narrow_a_split(tmp_path):
    write_split(tmp_path / "train", ["a", "b", "c"])
    (tmp_path / "train.txt").write_text("c\na\n")
    assert [s.name for s in find_samples(tmp_path, "levir-cd", "train")] == ["c", "a"]
    (tmp_path / "train.txt").write_text("a\nzzz\n")
    with pytest.raises(DatasetError, match="zzz"):
        find_samples(tmp_path, "levir-cd", "train")


def test_missing_partner_is_named(tmp_path):
    write_split(tmp_path, ["a", "b"])
    (tmp_path / "B" / "b.png").unlink()
    with pytest.raises(DatasetError, match=r"A/b\.png has no partner in .*B/"):
        find_samples(tmp_path, "generic")


def test_missing_label_is_named(tmp_path):
    write_split(tmp_path, ["a", "b"])
    (tmp_path / "label" / "a.png").unlink()
    with pytest.raises(DatasetError, match=r"A/a\.png has no label"):
        find_samples(tmp_path, "generic")


def test_a_missing_label_folder_is_named_once_and_many_problems_fit_one_line(tmp_path):
    """Before, a set without label/ listed one line per image, and said nothing of the folder."""
    write_split(tmp_path, [f"p{k}" for k in range(8)])
    for k in range(7):
        (tmp_path / "label" / f"p{k}.png").unlink()
    with pytest.raises(DatasetError) as problems:
        find_samples(tmp_path, "generic")
    said = str(problems.value)
    assert "\n" not in said and said.startswith(f"7 problem(s) in {tmp_path}: {tmp_path / 'A' / 'p0.png'} has no label")
    assert said.endswith("; and 2 more")
    __import__("shutil").rmtree(tmp_path / "label")
    with pytest.raises(DatasetError) as missing:
        find_samples(tmp_path, "generic")
    assert str(missing.value) == (f"{tmp_path} has no label/ folder: the labels go there, one per image of A/ with "
                                  "the same name (layout 'generic')")
    assert [s.label for s in find_samples(tmp_path, "generic", require_labels=False)] == [None] * 8


def test_label_of_another_size_is_named(tmp_path):
    write_split(tmp_path, ["a"])
    Image.fromarray(np.zeros((50, 60), np.uint8)).save(tmp_path / "label" / "a.png")
    with pytest.raises(DatasetError, match=r"sizes differ.*label/a\.png is 60x50"):
        find_samples(tmp_path, "generic")


def test_unreadable_file_is_named(tmp_path):
    write_split(tmp_path, ["a"])
    (tmp_path / "B" / "a.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"B/a\.png cannot be read"):
        find_samples(tmp_path, "generic")


def test_wrong_layout_says_what_was_expected(tmp_path):
    write_split(tmp_path / "test", ["a"])
    with pytest.raises(DatasetError, match=r"expected .*test/t1/"):
        find_samples(tmp_path, "dsifn", "test")
    with pytest.raises(DatasetError, match="unknown dataset layout 'levir'"):
        find_samples(tmp_path, "levir", "test")
