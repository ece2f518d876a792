"""The ``dsqnet`` command line on real files: GeoTIFFs and PNGs written and read with rasterio."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import rasterio
import torch
from rasterio.errors import NotGeoreferencedWarning

from catalog.example_pair import write_example_pair
from dsqnet.weights.model_file import read_metadata
from flows.cli.main import main
from tests.helpers import GOLDEN_D64, GOLDEN_VITAE, golden_file


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    folder = tmp_path_factory.mktemp("example")
    pair = write_example_pair(folder, size_px=320)
    model = folder / "model.safetensors"
    assert main(["init-model", "dsqnet_swin_mini", "--out", str(model)]) == 0
    return pair, model


def test_predict_writes_a_georeferenced_change_map_and_probabilities(example, tmp_path, capsys):
    pair, model = example
    out, prob = tmp_path / "change.tif", tmp_path / "prob.tif"
    code = main(["predict", "--model", str(model), "--before", str(pair.before), "--after", str(pair.after),
                 "--out", str(out), "--probabilities", str(prob), "--window", "256", "--stride", "128"])
    assert code == 0
    with rasterio.open(pair.before) as src, rasterio.open(out) as change, rasterio.open(prob) as p:
        assert change.crs == src.crs and change.transform == src.transform
        assert (change.width, change.height) == (src.width, src.height) == (320, 320) and change.dtypes[0] == "uint8"
        mask, probability = change.read(1), p.read(1)
    assert set(np.unique(mask)) <= {0, 1}
    assert ((probability >= 0) & (probability <= 1)).all()
    np.testing.assert_array_equal(mask, (probability >= 0.5).astype(np.uint8))
    assert "changed" in capsys.readouterr().out


def test_predict_matches_the_python_api(example, tmp_path):
    from dsqnet import Predictor
    from dsqnet.weights.model_file import load

    pair, model = example
    out = tmp_path / "prob.tif"
    main(["predict", "--model", str(model), "--before", str(pair.before), "--after", str(pair.after),
          "--out", str(tmp_path / "c.tif"), "--probabilities", str(out)])
    with rasterio.open(pair.before) as a, rasterio.open(pair.after) as b, rasterio.open(out) as p:
        before, after, written = a.read().transpose(1, 2, 0), b.read().transpose(1, 2, 0), p.read(1)
    expected = Predictor(load(model), device="cpu").predict_windows(before, after)
    np.testing.assert_allclose(written, expected, atol=1e-6)


def test_png_pairs_give_a_png_map(example, tmp_path):
    pair, model = example
    pngs = []
    for src_path in (pair.before, pair.after):
        with rasterio.open(src_path) as src:
            data = src.read()
        png = tmp_path / f"{src_path.stem}.png"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(png, "w", driver="PNG", width=data.shape[2], height=data.shape[1], count=3,
                               dtype="uint8") as dst:
                dst.write(data)
        pngs.append(png)
    out = tmp_path / "change.png"
    assert main(["predict", "--model", str(model), "--before", str(pngs[0]), "--after", str(pngs[1]),
                 "--out", str(out)]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(out) as change:
            assert set(np.unique(change.read(1))) <= {0, 255}


def test_mismatched_images_fail_clearly_and_write_nothing(example, tmp_path, capsys):
    pair, model = example
    other = write_example_pair(tmp_path / "other", size_px=200)
    out = tmp_path / "change.tif"
    code = main(["predict", "--model", str(model), "--before", str(pair.before), "--after", str(other.after),
                 "--out", str(out)])
    assert code == 1
    assert "must cover the same pixels" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".*partial*"))


def test_missing_model_and_images_name_the_file(example, tmp_path, capsys):
    pair, _ = example
    assert main(["predict", "--model", str(tmp_path / "nope.safetensors"), "--before", str(pair.before),
                 "--after", str(pair.after), "--out", str(tmp_path / "c.tif")]) == 1
    assert "nope.safetensors" in capsys.readouterr().err
    assert main(["predict", "--model", "m", "--before", str(tmp_path / "a.tif"), "--after", str(pair.after),
                 "--out", str(tmp_path / "c.tif")]) == 1
    assert "a.tif does not exist" in capsys.readouterr().err


def test_convert_opencd_checkpoint_to_our_format(tmp_path):
    g = golden_file(GOLDEN_D64)
    pth, out = tmp_path / "authors.pth", tmp_path / "converted.safetensors"
    torch.save({"state_dict": g["state_dict"], "meta": {"iter": 80000}}, pth)
    assert main(["convert-opencd", str(pth), "--out", str(out)]) == 0
    assert read_metadata(out)["config"]["head"]["head_width"] == 64
    from dsqnet.weights.model_file import load

    with torch.no_grad():
        logits = load(out).eval()(g["inputs"]["img_a"], g["inputs"]["img_b"])
    torch.testing.assert_close(logits, g["logits_full"], atol=1e-4, rtol=1e-4)


def test_convert_an_authors_vitae_checkpoint(tmp_path):
    g = golden_file(GOLDEN_VITAE)
    pth, out = tmp_path / "authors_vitae.pth", tmp_path / "converted.safetensors"
    torch.save({"state_dict": g["state_dict"], "meta": {"iter": 80000}}, pth)
    assert main(["convert-opencd", str(pth), "--out", str(out)]) == 0
    assert read_metadata(out)["config"]["backbone_type"] == "vitae"
    from dsqnet.weights.model_file import load

    with torch.no_grad():
        logits = load(out).eval()(g["inputs"]["img_a"], g["inputs"]["img_b"])
    torch.testing.assert_close(logits, g["logits_full"], atol=1e-4, rtol=1e-4)


def test_architectures_lists_both_backbones(capsys):
    assert main(["architectures"]) == 0
    text = capsys.readouterr().out
    assert "dsqnet_swin_t" in text and "dsqnet_vitae_s" in text and "ViTAEv2-S" in text


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for command in ("predict", "init-model", "convert-opencd", "example-pair", "architectures"):
        assert command in text
