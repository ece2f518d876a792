"""retrain-model on the demo: better labels make a better model that is promoted, bad labels do not;
a run killed while training resumes from its checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dsqnet.model import DSQNet
from dsqnet.weights.model_file import load_model_file, save
from flows.cli.main import main
from flows.models.resolve import DEMO_MODEL
from flows.models.registry import ModelRegistry
from flows.retrain import decide, retrain_model, split_names
from tests.flows.flow_helpers import cli_env

DSQNET = str(Path(sys.executable).parent / "dsqnet")
FAST = {"window": 256, "stride": 128}  # one window per 256-px tile


@pytest.fixture
def demo(demo_town):
    return demo_town


def weak_model(path: Path) -> Path:
    """The demo model with its classifier re-initialised: good features, a poor change map."""
    model = load_model_file(DEMO_MODEL)
    torch.manual_seed(0)
    torch.nn.init.normal_(model.decode_head.conv_seg.weight, std=0.01)
    torch.nn.init.zeros_(model.decode_head.conv_seg.bias)
    return save(model, path, metadata={"band_order": ["red", "green", "blue"]})


def scene_args(demo, registry: Path, out: Path) -> list[str]:
    before, after = demo.dates[0], demo.dates[2]
    params = {"name": "demo", "registry": registry, "catalog": demo.catalog, "region": demo.region_name,
              "regions": demo.regions, "before": before, "after": after, "labels": demo.truth[(before, after)][1],
              "max-iters": 40, "out": out, **FAST}
    return [arg for k, v in params.items() for arg in (f"--{k}", str(v))]


def test_the_split_is_seeded_and_keeps_both_sides_non_empty():
    names = [f"t{k:02d}" for k in range(10)]
    train, held = split_names(names, 0.25, seed=3)
    assert len(held) == 2 and sorted(train + held) == names
    assert split_names(names, 0.25, seed=3) == (train, held)
    assert split_names(names[:2], 0.9, seed=0)[0]  # never everything held out
    with pytest.raises(ValueError, match="cannot be split"):
        split_names(names[:1], 0.25, seed=0)


def test_the_decision_needs_the_margin_and_no_loss_on_the_reference():
    base = {"holdout": {"f1": 0.70}, "reference": {"f1": 0.80}}
    assert decide(base, {"holdout": {"f1": 0.72}, "reference": {"f1": 0.80}}, 0.01, 0.0).promote
    assert not decide(base, {"holdout": {"f1": 0.705}, "reference": {"f1": 0.80}}, 0.01, 0.0).promote
    worse_reference = decide(base, {"holdout": {"f1": 0.9}, "reference": {"f1": 0.78}}, 0.01, 0.0)
    assert not worse_reference.promote and "reference F1 falls" in worse_reference.reasons[1]
    assert decide(base, {"holdout": {"f1": 0.9}, "reference": {"f1": 0.78}}, 0.01, 0.05).promote
    assert not decide({"holdout": {"f1": None}}, {"holdout": {"f1": None}}, 0.0, 0.0).promote


def test_better_labels_are_learned_and_promoted_and_a_killed_run_resumes(prefect_api, demo, tmp_path):
    registry_dir, out = tmp_path / "registry", tmp_path / "runs"
    registry = ModelRegistry(registry_dir)
    registry.register(weak_model(tmp_path / "weak.safetensors"), name="demo", aliases=("production",))

    env = cli_env(prefect_api)
    run = subprocess.Popen([DSQNET, "retrain", *scene_args(demo, registry_dir, out)], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline and run.poll() is None and not list(out.glob(".cache/*/train/train_state.pt")):
            time.sleep(0.2)
    finally:
        os.killpg(run.pid, signal.SIGKILL)  # mid-training: the first checkpoint (step 25 of 40) is written
        run.wait()
    assert list(out.glob(".cache/*/train/train_state.pt")), "the run must be killed after its first checkpoint"
    assert not list(out.glob("retrain_*")) and registry.versions("demo") == [1]  # nothing published or registered

    assert main(["retrain", *scene_args(demo, registry_dir, out)]) == 0
    report = json.loads(next(out.glob("retrain_*/retrain.json")).read_text())
    assert report["training"]["resumed_from_step"] == 25 and report["training"]["steps"] == 40
    base, candidate = report["scores"]["base"]["holdout"], report["scores"]["candidate"]["holdout"]
    assert base["pairs"] == candidate["pairs"] == len(report["data"]["source"]["holdout"]) > 0
    assert candidate["f1"] > base["f1"] + 0.1, (base, candidate)
    assert report["decision"]["promoted"]

    assert registry.aliases("demo") == {"production": 2, "candidate": 2}
    promoted = registry.resolve("demo@production")
    assert promoted.lineage["base_model"] == "demo@1" and promoted.lineage["training_data"]["kind"] == "scenes"
    assert promoted.metrics["retrain"]["candidate"]["holdout"]["f1"] == candidate["f1"]

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        table = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["retrain-comparison"])))
        decision = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["retrain-decision"])))
    rows = json.loads(table[0].data) if isinstance(table[0].data, str) else table[0].data
    assert {"set": "holdout", "metric": "f1", "base": base["f1"], "candidate": candidate["f1"],
            "gain": round(candidate["f1"] - base["f1"], 4)} in rows
    assert "demo@2 **promoted** to `production`" in decision[0].data


def shuffled_training_set(training: Path, folder: Path) -> tuple[Path, Path]:
    """Two thirds of the demo's training tiles with each label moved to the next tile (wrong labels),
    and the last third with its true labels (the holdout)."""
    names = sorted(p.name for p in (training / "A").iterdir())
    cut = 2 * len(names) // 3
    train, holdout = folder / "shuffled", folder / "holdout"
    for root, chosen in ((train, names[:cut]), (holdout, names[cut:])):
        for sub in ("A", "B", "label"):
            (root / sub).mkdir(parents=True)
            for name in chosen:
                shutil.copy(training / sub / name, root / sub / name)
    for name, wrong in zip(names[:cut], names[1:cut] + names[:1]):
        shutil.copy(training / "label" / wrong, train / "label" / name)
    return train, holdout


def test_wrong_labels_make_a_candidate_that_is_registered_but_not_promoted(prefect_api, demo, tmp_path):
    registry = ModelRegistry(tmp_path / "registry")
    registry.register(DEMO_MODEL, name="demo", aliases=("production",))
    train, holdout = shuffled_training_set(demo.training, tmp_path)
    params = dict(name="demo", registry=str(registry.root), data=str(train), holdout=str(holdout),
                  reference=str(holdout), max_iters=30, lr=0.002, out=str(tmp_path / "runs"), **FAST)

    report = retrain_model(**params)
    base, candidate = report["scores"]["base"], report["scores"]["candidate"]
    # wrong labels teach it to call nothing change (F1 undefined: None) or to call the wrong things
    assert base["holdout"]["f1"] > 0.5 and (candidate["holdout"]["f1"] or 0.0) < base["holdout"]["f1"]
    assert not report["decision"]["promoted"]
    assert "short of the margin" in report["decision"]["reasons"][0]
    assert "reference F1" in report["decision"]["reasons"][1]
    assert registry.aliases("demo") == {"production": 1, "candidate": 2}
    assert registry.resolve("demo@2").lineage["training_data"] == {
        "kind": "benchmark", "root": str(train.resolve()), "layout": "generic", "split": None,
        "pairs": len(list((train / "A").iterdir())), "train": sorted(p.stem for p in (train / "A").iterdir()),
        "holdout": []}

    again = retrain_model(**params)  # the same inputs: nothing retrained, the same weights registered once
    assert again["training"]["resumed_from_step"] == 30 and registry.versions("demo") == [1, 2]
    assert again["candidate"]["ref"] == "demo@2" and registry.aliases("demo") == {"production": 1, "candidate": 2}


def test_retraining_out_of_memory_names_the_configs_micro_batches_and_the_batch_size(prefect_api, demo, tmp_path,
                                                                                     monkeypatch):
    from flows.runtime.out_of_memory import OutOfMemory

    real_forward = DSQNet.forward

    def forward(self, *args, **kwargs):  # training steps ask for more than torch's CPU allocator gives
        return torch.empty(10**13, dtype=torch.uint8) if self.training else real_forward(self, *args, **kwargs)

    monkeypatch.setattr(DSQNet, "forward", forward)
    registry = ModelRegistry(tmp_path / "registry")
    registry.register(DEMO_MODEL, name="demo", aliases=("production",))
    train, holdout = shuffled_training_set(demo.training, tmp_path)
    with pytest.raises(OutOfMemory) as refused:
        retrain_model(name="demo", registry=str(registry.root), data=str(train), holdout=str(holdout), max_iters=2,
                      batch_size=2, out=str(tmp_path / "runs"), **FAST)
    assert str(refused.value) == (
        "training ran out of memory on cpu (tried to allocate 9313.23 GiB) with 2 crops at once in fp32: raise "
        "schedule.accumulate in the config fine-tune (now 1) to pass the step's 2 crops fewer at a time, lower "
        "--batch-size (parameter 'batch_size', now 2), or close other programs")
    assert registry.versions("demo") == [1]  # nothing registered


def test_a_damaged_scenes_cache_is_named_with_the_folder_to_remove(prefect_api, demo, tmp_path):
    """Before, the rerun ended in the codec's ``error during blosc decompression``, naming no folder."""
    from flows.runtime.damaged_cache import DamagedCache

    registry = ModelRegistry(tmp_path / "registry")
    registry.register(DEMO_MODEL, name="demo", aliases=("production",))
    before, after = demo.dates[0], demo.dates[2]
    params = dict(name="demo", registry=str(registry.root), catalog=str(demo.catalog), region=demo.region_name,
                  regions=str(demo.regions), before=before, after=after, labels=str(demo.truth[(before, after)][1]),
                  max_iters=1, batch_size=2, out=str(tmp_path / "runs"), **FAST)
    retrain_model(**params)
    work = next(p for p in (tmp_path / "runs" / ".cache").glob("retrain_*") if p.is_dir())
    chunk = next(p for p in sorted((work / "scenes.zarr" / "image" / "c").rglob("*")) if p.is_file())
    chunk.write_bytes(chunk.read_bytes()[:100])  # cut short, as by a crash of the machine ...
    __import__("shutil").rmtree(work / "labels")  # ... before the labels were cut from the scenes
    with pytest.raises(DamagedCache) as refused:
        retrain_model(**params)
    assert str(refused.value).startswith(f"the run's cache {work} is damaged (")
    assert str(refused.value).endswith("): remove that folder and run again, which computes it afresh")
    assert registry.versions("demo") == [1, 2]  # the first run's candidate, and nothing from the second


def test_judging_out_of_memory_names_the_evaluation_batch_and_the_rerun_keeps_the_training(prefect_api, demo, tmp_path,
                                                                                          monkeypatch):
    from flows.runtime.out_of_memory import OutOfMemory

    real_forward = DSQNet.forward

    def forward(self, *args, **kwargs):  # scoring asks for more than torch's CPU allocator gives
        return real_forward(self, *args, **kwargs) if self.training else torch.empty(10**13, dtype=torch.uint8)

    monkeypatch.setattr(DSQNet, "forward", forward)
    registry = ModelRegistry(tmp_path / "registry")
    registry.register(DEMO_MODEL, name="demo", aliases=("production",))
    train, holdout = shuffled_training_set(demo.training, tmp_path)
    params = dict(name="demo", registry=str(registry.root), data=str(train), holdout=str(holdout), max_iters=2,
                  batch_size=2, out=str(tmp_path / "runs"), **FAST)
    with pytest.raises(OutOfMemory) as refused:
        retrain_model(**params)
    assert str(refused.value) == (
        "the evaluation ran out of memory on cpu (tried to allocate 9313.23 GiB) with batches of 4 windows of 256 px "
        "in fp32: lower --eval-batch-size (parameter 'eval_batch_size', now 4), or close other programs")
    assert registry.versions("demo") == [1]

    monkeypatch.setattr(DSQNet, "forward", real_forward)
    again = retrain_model(**params, eval_batch_size=2)  # the same work folder: the training is not done twice
    assert again["training"]["resumed_from_step"] == 2 and again["parameters"]["eval_batch_size"] == 2
    assert registry.versions("demo") == [1, 2]
