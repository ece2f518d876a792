"""``dsqnet train`` and ``dsqnet evaluate`` end to end on a small real dataset."""

from __future__ import annotations

import json

from flows.cli import main
from tests.dsqnet.datasets_helpers import generic_dataset


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


def test_evaluate_without_a_model_or_predictions_explains_both_ways(capsys):
    assert main(["evaluate", "--data", "somewhere"]) == 1
    err = capsys.readouterr().err
    assert "--model CKPT --data DIR" in err and "--predictions DIR --labels DIR" in err


def test_train_with_an_unknown_config_lists_the_bundled_ones(capsys):
    assert main(["train", "--config", "levir"]) == 1
    assert "levir-cd_swin-t" in capsys.readouterr().err
