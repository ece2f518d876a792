"""evaluate-model: object matching on hand-made masks, the flow on a benchmark folder and on scenes with
label polygons, through Prefect's own API, real PNGs, GeoParquet, COGs and zarr."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
from PIL import Image
from shapely.geometry import Point, box

from dsqnet import Predictor
from dsqnet.weights.model_file import load
from dsqnet.data import ChangeDetectionDataset, find_samples
from dsqnet.evaluation import evaluate_model
from flows.cli.main import build_parser, main
from flows.evaluate import BenchmarkSet, evaluate_labeled_set, evaluate_model_flow
from flows.params.evaluate import parse_evaluate_request
from flows.scoring.labeled_data import (
    LabeledScenesSpec,
    LabelError,
    labeled_scenes_to_folder,
    prepare_labeled_scenes,
    read_label_polygons,
)
from flows.scoring.objects import label_components, object_counts
from flows.params.detect import ParameterError
from flows.models.registry import ModelRegistry
from flows.runtime.damaged_cache import DamagedCache
from tests.catalog.stac_helpers import SPOT, WORLD_CRS
from tests.dsqnet.datasets_helpers import generic_dataset
from tests.flows.flow_helpers import hole_catalog, hole_pixels_in_region, tiny_model_file

WINDOWS = {"window": 96, "stride": 48, "batch_size": 8}
DATES = {"before": "2021-06-10", "after": "2023-06-12"}


def strict_json(path: Path) -> dict:
    """Parse as strict JSON: NaN or Infinity in the file fail the test."""
    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


# --------------------------------------------------------------------------------------------------
# Object metrics


def test_objects_are_matched_one_to_one_at_iou_one_half():
    truth = np.zeros((40, 40), np.uint8)
    prediction = np.zeros_like(truth)
    truth[2:8, 2:8] = 1         # A: found exactly
    prediction[2:8, 2:8] = 1
    truth[12:18, 2:8] = 1       # B: found a little too large, IoU 36/48 = 0.75
    prediction[12:18, 2:10] = 1
    truth[25:35, 2:12] = 1      # C: split into two halves, each IoU 40/100 = 0.4 (a gap column between them)
    prediction[25:35, 2:6] = 1
    prediction[25:35, 8:12] = 1
    prediction[30:34, 30:34] = 1  # D: a false detection
    counts = object_counts(prediction, truth)
    assert (counts.true_objects, counts.predicted_objects, counts.matched) == (3, 5, 2)
    scores = counts.scores()
    assert scores["precision"] == pytest.approx(2 / 5) and scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 * 2 / (3 + 5))
    assert scores["mean_matched_iou"] == pytest.approx((1.0 + 0.75) / 2)
    assert (scores["false_positives"], scores["false_negatives"]) == (3, 1)


def test_object_edge_cases_ignore_ties_connectivity_and_size():
    truth = np.zeros((20, 20), np.uint8)
    prediction = np.zeros_like(truth)
    truth[0:2, 0:2] = 1
    prediction[0:2, 0:1] = 1    # exactly IoU 0.5: matched
    truth[5:7, 5:7] = 255       # not observed: a prediction there is neither right nor wrong
    prediction[5:7, 5:7] = 1
    prediction[10, 10] = prediction[11, 11] = 1  # touching only at a corner: two objects (4-connected)
    counts = object_counts(prediction, truth)
    assert (counts.true_objects, counts.predicted_objects, counts.matched) == (1, 3, 1)
    assert object_counts(prediction, truth, min_pixels=2).predicted_objects == 1  # single pixels dropped
    assert object_counts(prediction, truth, iou_threshold=0.51).matched == 0

    labels, n = label_components(prediction.astype(bool))
    assert n == 4 and labels[0, 0] == 1 and labels[11, 11] == 4  # numbered by first pixel, row-major
    empty = object_counts(np.zeros((4, 4)), np.zeros((4, 4))).scores()
    assert np.isnan(empty["precision"]) and np.isnan(empty["f1"]) and empty["true_objects"] == 0


# --------------------------------------------------------------------------------------------------
# A benchmark folder, through the command line, with a registry model


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    data = generic_dataset(folder / "pairs", n=3, size=96)
    model = tiny_model_file(folder / "tiny.safetensors")
    registry = folder / "registry"
    ModelRegistry(registry).register(model, name="tiny", aliases=["production"])
    return folder, data, model, registry


def test_evaluate_model_on_a_benchmark_folder(prefect_api, bench, capsys):
    folder, data, model, registry = bench
    out = folder / "evaluations"
    code = main(["evaluate-model", "--model", "tiny@production", "--registry", str(registry), "--data", str(data),
                 "--out", str(out), "--window", "96", "--stride", "48", "--batch-size", "8", "--device", "cpu",
                 "--save-predictions", "--record-metrics"])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    run = out / "tiny-1_on_pairs"  # <model ref>_on_<folder>
    report = strict_json(run / "evaluation.json")
    assert f"{run}/evaluation.json" in printed and "objects: F1" in printed
    assert report["model"]["ref"] == "tiny@1" and report["model"]["requested"] == "tiny@production"
    assert report["data"]["pairs"] == 3 and [p["name"] for p in report["pairs"]] == ["pair_00", "pair_01", "pair_02"]

    # the pixel scores are #3's, exactly: dsqnet evaluate's code on the same pairs
    samples = find_samples(data, "generic", "test")
    expected = evaluate_model(Predictor(load(model), device="cpu"), ChangeDetectionDataset(samples, "threshold"),
                              **WINDOWS)
    assert report["pixel"]["confusion_matrix"] == expected["confusion_matrix"]
    for key in ("precision", "recall", "f1", "iou", "kappa"):
        assert report["pixel"][key] == (None if np.isnan(expected[key]) else pytest.approx(expected[key])), key

    # the object counts add up over the pairs, from the predictions the run wrote
    totals = np.zeros(3, int)
    for sample in samples:
        predicted = np.asarray(Image.open(run / "predictions" / f"{sample.name}.png")) > 0
        label = (np.asarray(Image.open(sample.label)) >= 128).astype(np.uint8)
        counts = object_counts(predicted, label)
        totals += (counts.true_objects, counts.predicted_objects, counts.matched)
    objects = report["objects"]
    assert (objects["true_objects"], objects["predicted_objects"], objects["matched"]) == tuple(totals)
    assert objects["true_objects"] == 3  # one square per generated pair

    # the table artifact, read back from the API
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["evaluation-metrics"])))
        summary = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["evaluation-summary"])))
    rows = next(json.loads(a.data) if isinstance(a.data, str) else a.data for a in found
                if str(a.flow_run_id) == report["flow_run_id"])
    pixel_row, object_row = rows
    assert pixel_row["level"] == "pixel" and pixel_row["matched"] == expected["confusion_matrix"][1][1]
    assert pixel_row["f1"] == (None if report["pixel"]["f1"] is None else round(report["pixel"]["f1"], 4))
    assert object_row["level"].startswith("object") and object_row["true"] == 3
    assert object_row["matched"] == objects["matched"]
    assert any("tiny@1" in a.data for a in summary)

    # the scores are kept in the registry record of the version that made them
    kept = ModelRegistry(registry).resolve("tiny@1").metrics["tiny-1_on_pairs"]
    assert kept["pixel"]["f1"] == report["pixel"]["f1"] and kept["objects"]["matched"] == objects["matched"]
    assert kept["flow_run_id"] == report["flow_run_id"]

    # the plain function gives the same scores without a flow run
    plain = evaluate_labeled_set("tiny@1", BenchmarkSet(str(data)), registry=registry, device="cpu", **WINDOWS)
    assert plain["pixel"] == report["pixel"] and plain["objects"] == report["objects"]
    assert plain["flow_run_id"] is None


# --------------------------------------------------------------------------------------------------
# Scenes and label polygons


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """The two-date catalog with a nodata hole, and labels: a 10 m square on the bright spot, and a
    square over the hole's corner, written in lon/lat (the grid is UTM 33N)."""
    folder = tmp_path_factory.mktemp("scenes")
    catalog, region = hole_catalog(folder / "catalog")
    cx, cy = round(SPOT[0]), round(SPOT[1])  # whole metres: on pixel edges of the 0.5 m grid
    squares = [box(cx - 5, cy - 5, cx + 5, cy + 5)]
    labels = folder / "labels.parquet"
    gpd.GeoDataFrame({"kind": ["spot"]}, geometry=squares, crs=WORLD_CRS).to_crs("EPSG:4326").to_parquet(labels)
    spec = LabeledScenesSpec(catalog=str(catalog), region=region, labels=str(labels), **DATES)
    return folder, spec, (cx, cy)


def test_label_polygons_land_on_their_pixels_and_unobserved_pixels_are_ignored(scenes):
    folder, spec, (cx, cy) = scenes
    labeled = prepare_labeled_scenes(spec, folder / "work")
    height, width = labeled.shape
    before, _, label = labeled.read(slice(0, height), slice(0, width))
    t = labeled.transform
    assert (t.a, t.e) == (0.5, -0.5)
    top, left = int((t.f - (cy + 5)) / 0.5), int((cx - 5 - t.c) / 0.5)
    expected = np.zeros((height, width), bool)
    expected[top:top + 20, left:left + 20] = True  # 10 m = 20 pixels, reprojected from lon/lat and back
    rows, cols = hole_pixels_in_region()
    hole = np.zeros_like(expected)
    hole[rows, cols] = True
    assert ((label == 1) == expected).all()
    assert ((label == 255) == hole).all()
    assert set(np.unique(label)) == {0, 1, 255}
    # and the pixels under the label are the bright spot the scenes show there
    spot = np.unravel_index(np.argmax(before[..., 0].astype(int)), before.shape[:2])
    assert label[spot] == 1 and abs(spot[0] - (top + 9.5)) <= 1.5 and abs(spot[1] - (left + 9.5)) <= 1.5

    tiles = labeled_scenes_to_folder(labeled, folder / "tiles", tile_size=256)
    manifest = strict_json(folder / "tiles" / "dataset.json")
    assert len(tiles.names) == 9 and manifest["label_encoding"] == "zero-one"  # 3 x 3, the last ones flush
    assert manifest["grid"]["shape"] == [height, width] and manifest["scenes"]["after"] == ["after"]
    for tile in manifest["tiles"]:
        written = np.asarray(Image.open(folder / "tiles" / "label" / f"{tile['name']}.png"))
        r, c = tile["row"], tile["col"]
        assert written.shape == (256, 256)
        assert (written == label[r:r + 256, c:c + 256]).all(), tile["name"]
        image = np.asarray(Image.open(folder / "tiles" / "A" / f"{tile['name']}.png"))
        assert (image == before[r:r + 256, c:c + 256]).all()


def test_evaluate_model_on_scenes_and_label_polygons(prefect_api, scenes, bench):
    folder, spec, _ = scenes
    model = bench[2]
    report = evaluate_model_flow(model=str(model), catalog=spec.catalog, region=spec.region, labels=spec.labels,
                                 out=str(folder / "evaluations"), run_name="spot", device="cpu", window=128,
                                 stride=64, batch_size=16, **DATES)
    written = strict_json(folder / "evaluations" / "spot" / "evaluation.json")
    assert report["json"] == str(folder / "evaluations" / "spot" / "evaluation.json")
    assert written["data"]["source"]["kind"] == "scenes" and written["data"]["pairs"] == 1
    rows, cols = hole_pixels_in_region()
    observed = 561 * 561 - (rows.stop - rows.start) * (cols.stop - cols.start)
    matrix = np.array(written["pixel"]["confusion_matrix"])
    assert matrix.sum() == observed and matrix[1].sum() == 400  # 20 x 20 changed pixels, all observed
    assert written["objects"]["true_objects"] == 1
    assert written["model"]["ref"] is None and written["model"]["name"] == "dsqnet_swin_mini"
    labeled = folder / "evaluations" / ".cache" / "spot" / "labeled"
    assert strict_json(labeled / "dataset.json")["pixels"]["changed"] == 400

    # scored in tiles (the plain function, no flow run), every pixel still counts once
    tiled = evaluate_labeled_set(str(model), spec, work_dir=folder / "work", tile_size=256, device="cpu",
                                 window=128, stride=64, batch_size=16)
    assert tiled["data"]["pairs"] == 9 and tiled["data"]["source"]["tile_size"] == 256
    matrix = np.array(tiled["pixel"]["confusion_matrix"])
    assert matrix.sum() == observed and matrix[1].sum() == 400


def test_a_damaged_scenes_cache_is_named_with_the_folder_to_remove(prefect_api, scenes, bench, tmp_path):
    """Before, the rerun ended in the codec's ``error during blosc decompression``, naming no folder."""
    _, spec, _ = scenes
    run = dict(model=str(bench[2]), catalog=spec.catalog, region=spec.region, labels=spec.labels,
               out=str(tmp_path / "evaluations"), run_name="spot", device="cpu", window=128, stride=64,
               batch_size=16, **DATES)
    first = evaluate_model_flow(**run)
    work = tmp_path / "evaluations" / ".cache" / "spot"
    image = work / "scenes.zarr" / "image"
    chunk = next(p for p in sorted((image / "c").rglob("*")) if p.is_file())
    chunk.write_bytes(chunk.read_bytes()[:100])  # cut short, as by a crash of the machine
    published = strict_json(tmp_path / "evaluations" / "spot" / "evaluation.json")
    with pytest.raises(DamagedCache) as refused:
        evaluate_model_flow(**run)
    assert str(refused.value).startswith(f"the run's cache {work} is damaged (")
    assert str(refused.value).endswith("): remove that folder and run again, which computes it afresh")
    assert strict_json(tmp_path / "evaluations" / "spot" / "evaluation.json") == published  # the outputs left alone
    shutil.rmtree(work)  # the fix it names
    assert evaluate_model_flow(**run)["pixel"] == first["pixel"]


# --------------------------------------------------------------------------------------------------
# Bad input


def test_bad_labels_are_refused_with_the_fix(tmp_path, scenes):
    no_crs = tmp_path / "no_crs.parquet"
    gpd.GeoDataFrame(geometry=[box(0, 0, 1, 1)]).to_parquet(no_crs)
    with pytest.raises(LabelError, match="has no CRS; set it"):
        read_label_polygons(no_crs)
    points = tmp_path / "points.parquet"
    gpd.GeoDataFrame(geometry=[Point(0, 0)], crs=WORLD_CRS).to_parquet(points)
    with pytest.raises(LabelError, match="holds Point geometries; change labels must be polygons"):
        read_label_polygons(points)
    text = tmp_path / "labels.parquet"
    text.write_text("not parquet")
    with pytest.raises(LabelError, match="is not GeoParquet"):
        read_label_polygons(text)
    with pytest.raises(LabelError, match="does not exist"):
        read_label_polygons(tmp_path / "missing.parquet")

    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(LabelError, match="was not written by labeled_scenes_to_folder"):
        labeled_scenes_to_folder(scenes[1], precious)
    assert (precious / "notes.txt").read_text() == "keep me" and len(list(precious.iterdir())) == 1


def test_parameters_name_the_problem_and_the_fix(tmp_path):
    with pytest.raises(ParameterError, match="data .a benchmark folder., or catalog, region, before, after and labels"):
        parse_evaluate_request()
    with pytest.raises(ParameterError, match="missing: before, after, labels"):
        parse_evaluate_request(catalog="c.json", region="1,2,3,4")
    with pytest.raises(ParameterError, match="either data .* or scenes and labels, not both"):
        parse_evaluate_request(data="folder", labels="l.parquet")
    with pytest.raises(ParameterError, match="unknown layout 'levir'"):
        parse_evaluate_request(data="folder", layout="levir")
    with pytest.raises(ParameterError, match="stride 600 is larger than the window 512"):
        parse_evaluate_request(data="folder", stride=600)
    assert parse_evaluate_request(data="folder").route == "benchmark"


def test_evaluate_model_help_names_every_layout_and_both_routes():
    from dsqnet.data import LAYOUTS

    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices["evaluate-model"]
    text = " ".join(sub.format_help().split())
    assert all(name in text for name in LAYOUTS)
    assert "--data" in text and "--labels" in text and "--tile-size" in text and "--record-metrics" in text


@pytest.mark.parametrize("command", ["evaluate-model", "retrain"])
def test_a_second_run_of_the_same_work_is_refused_naming_the_first(prefect_api, bench, tmp_path, capsys, command):
    """evaluate-model and retrain-model hold their run's lock as detect does (here held by this test
    process, standing in for a first run)."""
    from flows.files.locks import exclusive

    _, data, _, registry = bench
    out = tmp_path / "runs"
    model = ["--model", "tiny@production"] if command == "evaluate-model" else ["--name", "tiny", "--max-iters", "2"]
    args = [command, *model, "--registry", str(registry), "--data", str(data), "--out", str(out),
            "--run-name", "busy", "--device", "cpu"]
    with exclusive(out / ".cache" / "busy.lock"):
        assert main(args) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert re.fullmatch(
        rf"dsqnet {command}: error: run folder {re.escape(str(out / 'busy'))} is being written by another dsqnet run "
        rf"\(pid {os.getpid()} on {re.escape(socket.gethostname())}, started \d\d:\d\d UTC\); wait for it to finish "
        r"or choose another --run-name \(parameter 'run_name'\)\n", err), err
    assert not (out / ".cache" / "busy").exists() and not (out / "busy").exists()  # nothing of the first run's touched


@pytest.mark.parametrize("command", ["evaluate-model", "evaluate"])
def test_an_evaluation_out_of_memory_names_the_settings_that_make_it_fit(prefect_api, bench, tmp_path, capsys,
                                                                         monkeypatch, command):
    import torch

    from dsqnet.predictor import Predictor as RealPredictor

    def refused(*_, **__):  # a real refusal of torch's CPU allocator
        return torch.empty(10**13, dtype=torch.uint8)

    monkeypatch.setattr(RealPredictor, "predict_proba", refused)
    _, data, model, _ = bench
    args = ([command, "--model", str(model), "--data", str(data), "--window", "96", "--stride", "48", "--batch-size",
             "8", "--device", "cpu"] + (["--out", str(tmp_path / "runs")] if command == "evaluate-model" else []))
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines()[-1] == (
        f"dsqnet {command}: error: the evaluation ran out of memory on cpu (tried to allocate 9313.23 GiB) with "
        "batches of 8 windows of 96 px in fp32: lower --batch-size (parameter 'batch_size', now 8), or close other "
        "programs")
