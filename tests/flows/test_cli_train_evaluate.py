"""``dsqnet train`` and ``dsqnet evaluate`` end to end on a small real dataset."""

from __future__ import annotations

import json

import yaml

from dsqnet.weights.model_file import read_metadata
from flows.cli.main import main
from tests.dsqnet.datasets_helpers import generic_dataset
from tests.helpers import SMALL_VITAE


def test_train_then_evaluate_then_score_the_predictions(tmp_path, capsys):
    data = generic_dataset(tmp_path / "data", n=3, size=96)
    work = tmp_path / "run"
    assert main(["train", "--config", "cpu-small", "--data-root", str(data), "--work-dir", str(work),
                 "--max-iters", "2", "--batch-size", "2", "--num-workers", "0", "--device", "cpu"]) == 0
    assert "trained 2 iterations" in capsys.readouterr().out
    assert (work / "last.safetensors").is_file() and (work / "train_state.pt").is_file()

    assert main(["evaluate", "--model", str(work / "last.safetensors"), "--data", str(data), "--window", "96",
                 "--stride", "96", "--device", "cpu", "--json", "--save-predictions", str(tmp_path / "pred")]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["pixels"] == 3 * 96 * 96 and set(scores["per_class"]) == {"unchanged", "changed"}

    assert main(["evaluate", "--predictions", str(tmp_path / "pred"), "--labels", str(data / "label")]) == 0
    table = capsys.readouterr().out
    assert "change F1" in table and "kappa" in table


def test_predictions_saved_to_a_file_are_refused_before_any_work(tmp_path, capsys):
    """Before: "[Errno 17] File exists", after the model had loaded."""
    data = generic_dataset(tmp_path / "data", n=1, size=64)
    taken = tmp_path / "pred.txt"
    taken.write_text("mine")
    assert main(["evaluate", "--model", "no-such-model.safetensors", "--data", str(data),
                 "--save-predictions", str(taken)]) == 1
    assert capsys.readouterr().err == (f"dsqnet evaluate: error: --save-predictions {taken} is a file; name a folder "
                                       "(it gets one 0/255 PNG per pair)\n")
    assert taken.read_text() == "mine"


def test_labels_of_mixed_encodings_are_refused_and_the_named_encoding_scores_them(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    data = generic_dataset(tmp_path / "data", n=2, size=64)
    first = sorted((data / "label").iterdir())[0]
    label = np.array(Image.open(first))
    label[0, 0] = 1
    Image.fromarray(label).save(first)
    args = ["evaluate", "--predictions", str(data / "label"), "--labels", str(data / "label")]
    assert main(args) == 1
    assert capsys.readouterr().err.startswith("dsqnet evaluate: error: the labels mix two encodings: 1 (")
    assert main([*args, "--label-encoding", "threshold", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["per_class"]["changed"]["f1"] == 1.0  # the labels against themselves


def test_evaluate_without_a_model_or_predictions_explains_both_ways(capsys):
    assert main(["evaluate", "--data", "somewhere"]) == 1
    err = capsys.readouterr().err
    assert "--model CKPT --data DIR" in err and "--predictions DIR --labels DIR" in err


def test_train_with_an_unknown_config_lists_the_bundled_ones(capsys):
    assert main(["train", "--config", "levir"]) == 1
    assert "levir-cd_swin-t" in capsys.readouterr().err


def test_a_vitae_model_trains_evaluates_and_predicts_by_name(tmp_path, capsys):
    """The ViTAE backbone goes through the same commands as Swin: named in a config, then by file."""
    data = generic_dataset(tmp_path / "data", n=2, size=64)
    work = tmp_path / "run"
    config = tmp_path / "vitae.yaml"
    overrides = {k: list(v) for k, v in SMALL_VITAE.items()} | {"head_width": 32}
    config.write_text(yaml.safe_dump({
        "model": {"name": "dsqnet_vitae_s", "overrides": overrides},
        "data": {"layout": "generic", "train_split": None, "val_split": None},
        "augment": {"crop_size": 64}, "loss": {"ohem_min_kept": 1000}, "eval": {"window": 64, "stride": 64},
    }))
    assert main(["train", "--config", str(config), "--data-root", str(data), "--work-dir", str(work),
                 "--max-iters", "2", "--batch-size", "2", "--num-workers", "0", "--device", "cpu"]) == 0
    assert "trained 2 iterations" in capsys.readouterr().out
    model = work / "last.safetensors"
    meta = read_metadata(model)["config"]
    assert (meta["name"], meta["backbone_type"], meta["backbone"]["token_dims"]) == ("dsqnet_vitae_s", "vitae", [32, 64, 128, 256])

    assert main(["evaluate", "--model", str(model), "--data", str(data), "--window", "64", "--stride", "64",
                 "--device", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pixels"] == 2 * 64 * 64
    out = tmp_path / "change.png"
    assert main(["predict", "--model", str(model), "--before", str(data / "A" / "pair_00.png"),
                 "--after", str(data / "B" / "pair_00.png"), "--out", str(out), "--window", "64", "--stride", "32"]) == 0
    assert out.is_file()


def test_training_out_of_memory_names_the_micro_batches_and_the_batch_size(tmp_path, capsys, monkeypatch):
    import torch

    from dsqnet.model import DSQNet

    def too_big(self, *_, **__):  # a real refusal of torch's CPU allocator
        return torch.empty(10**13, dtype=torch.uint8)

    monkeypatch.setattr(DSQNet, "forward", too_big)
    data = generic_dataset(tmp_path / "data", n=3, size=96)
    assert main(["train", "--config", "cpu-small", "--data-root", str(data), "--work-dir", str(tmp_path / "run"),
                 "--max-iters", "2", "--batch-size", "2", "--num-workers", "0", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.endswith("\n")
    assert err.splitlines()[-1] == (  # on a line of its own, below the closed progress bar
        "dsqnet train: error: training ran out of memory on cpu (tried to allocate 9313.23 GiB) with 2 crops at once "
        "in fp32: raise --accumulate (now 1) to pass the step's 2 crops fewer at a time, lower --batch-size (now 2), "
        "or close other programs")
