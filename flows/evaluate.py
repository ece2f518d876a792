"""``evaluate-model``: how good is a model on labeled data, per pixel and per changed object.

    check-model -> [prepare-scenes -> rasterise-labels] -> score-pairs -> publish-evaluation

The labeled data is a benchmark folder (``dsqnet.data`` layouts), or scenes plus label polygons,
which ``flows.scoring.labeled_data`` puts on one grid and writes as a benchmark folder first, so both routes
are scored by the same code. Scoring runs the detect flow's own procedure (``dsqnet.evaluation.predict_change``)
with one confusion matrix over all pairs, as ``dsqnet evaluate`` reports it, plus object scores
(``flows.scoring.objects``). The result is ``<out>/<run>/evaluation.json`` (published whole or not at all),
a Prefect table artifact ``evaluation-metrics`` and a markdown summary ``evaluation-summary``.

``evaluate_labeled_set`` is the same evaluation as a plain function (no flow run, no artifacts, no
files but a scratch folder), for flows that compare models, e.g. a candidate and production on one
holdout set.
"""

from __future__ import annotations

import datetime as dt
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from catalog import parse_region
from dsqnet import Predictor
from dsqnet.predictor import resolve_device
from dsqnet.weights.model_file import load_model_file
from dsqnet.data import ChangeDetectionDataset, find_samples
from dsqnet.data.dataset import label_encoding_for
from dsqnet.evaluation import check_predictions_folder, predict_change
from dsqnet.metrics import ConfusionMatrix

from flows.params.signature import takes_parameters_of
from flows.params.inputs import check_inputs
from flows.outputs.artifacts import Progress
from flows.params.evaluate import EvaluateRequest, parse_evaluate_request
from flows.files.jsonfiles import json_safe, write_json_atomic
from flows.scoring.labeled_data import (
    LABEL_ENCODING,
    LabeledScenes,
    LabeledScenesSpec,
    folder_label_encoding,
    labeled_scenes_to_folder,
    prepare_labeled_scenes,
)
from flows.outputs.manifest import StepTimer
from flows.runtime.damaged_cache import said_if_damaged
from flows.runtime.versions import package_versions
from flows.models.resolve import ModelRecord, resolve_model
from flows.scoring.objects import ObjectCounts, object_counts
from flows.params.detect import ParameterError
from flows.models.registry import ModelRegistry
from flows.outputs.run_folder import RunFolder, check_writable, run_lock, with_output_errors
from flows.runtime.interrupts import cancellable
from flows.runtime.out_of_memory import out_of_memory, said_in_one_line
from flows.runtime import heartbeats

heartbeats.install()  # a run ends as soon as its work is done, not up to a second later

REPORT = "evaluation.json"
PIXEL_KEYS = ("precision", "recall", "f1", "iou", "kappa", "miou", "mf1", "overall_accuracy", "pixels",
              "confusion_matrix", "per_class")


@dataclass(frozen=True)
class BenchmarkSet:
    """A labeled folder to score: where, its layout and split, and (for folders made from scenes) its origin.

    ``label_encoding`` None: the folder's ``dataset.json`` when it has one, else the layout's rule.
    """

    root: str
    layout: str = "generic"
    split: str | None = "test"
    label_encoding: str | None = None
    source: dict | None = None

    def describe(self) -> dict[str, Any]:
        return asdict(self)


LabeledSet = str | Path | BenchmarkSet | LabeledScenesSpec


@dataclass(frozen=True)
class Options:
    """How to score: the test mode's windows and the object matching."""

    window: int = 512
    stride: int = 256
    batch_size: int = 4
    precision: str = "fp32"
    device: str = "auto"
    iou_threshold: float = 0.5
    min_object_pixels: int = 1


# --------------------------------------------------------------------------------------------------
# Building blocks (plain functions; the flow wraps them in tasks)


def benchmark_from_scenes(labeled: LabeledScenesSpec | LabeledScenes, folder: Path,
                          tile_size: int | None = None, work_dir: Path | None = None) -> BenchmarkSet:
    """Scenes + label polygons -> a benchmark folder at ``folder`` (see ``flows.scoring.labeled_data``); tiles do
    not overlap, so every pixel is scored once."""
    written = labeled_scenes_to_folder(labeled, folder, tile_size=tile_size, work_dir=work_dir, full_tiles=False)
    spec = labeled.spec if isinstance(labeled, LabeledScenes) else labeled
    return BenchmarkSet(str(written.root.resolve()), "generic", None, LABEL_ENCODING, source={
        "kind": "scenes", **spec.to_dict(), "tile_size": tile_size, "pairs": len(written.names),
        "skipped_tiles": written.skipped, "label_pixels": written.pixels,
    })


def labeled_pairs(benchmark: BenchmarkSet) -> ChangeDetectionDataset:
    """The pairs of a benchmark folder with their labels, checked for completeness."""
    samples = find_samples(benchmark.root, benchmark.layout, benchmark.split)
    encoding = (benchmark.label_encoding or folder_label_encoding(benchmark.root)
                or label_encoding_for(benchmark.layout, samples))
    return ChangeDetectionDataset(samples, encoding)


def score_pairs(model: ModelRecord, pairs: ChangeDetectionDataset, options: Options = Options(),
                predictions: Path | None = None, on_pair: Callable[[], None] | None = None) -> dict[str, Any]:
    """Pixel scores over all pairs (one confusion matrix), object scores (counts summed over pairs),
    and each pair's own figures."""
    if predictions is not None:
        check_predictions_folder(predictions)
        predictions.mkdir(parents=True, exist_ok=True)
    predictor = Predictor(load_model_file(model.path), device=None if options.device == "auto" else options.device,
                          precision=options.precision)
    total, objects, per_pair = ConfusionMatrix(), ObjectCounts(), []
    for item in pairs:
        prediction = predict_change(predictor, item["before"], item["after"], options.window, options.stride,
                                    options.batch_size)
        own = ConfusionMatrix().update(prediction, item["label"])
        total.counts += own.counts
        found = object_counts(prediction, item["label"], options.iou_threshold, options.min_object_pixels)
        objects += found
        per_pair.append({"name": item["name"], "pixel_f1": own.scores()["f1"], "changed_true": int(own.counts[1].sum()),
                         "changed_predicted": int(own.counts[:, 1].sum()), "true_objects": found.true_objects,
                         "predicted_objects": found.predicted_objects, "matched_objects": found.matched})
        if predictions is not None:
            Image.fromarray(prediction * np.uint8(255)).save(predictions / f"{item['name']}.png")
        if on_pair is not None:
            on_pair()
    scores = total.scores()
    return {"pixel": {k: scores[k] for k in PIXEL_KEYS}, "objects": objects.scores(options.iou_threshold),
            "pairs": per_pair}


def build_report(model: ModelRecord, benchmark: BenchmarkSet, scores: dict, options: Options,
                 timings: dict[str, float] | None = None) -> dict[str, Any]:
    """The evaluation as plain data (strict-JSON safe): model, data, parameters, scores, timings."""
    return json_safe({
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "flow_run_id": str(flow_run.get_id()) if flow_run.get_id() else None,
        "model": model.to_dict(),
        "data": {**benchmark.describe(), "pairs": len(scores["pairs"])},
        "parameters": asdict(options),
        **scores,
        "timings": timings or {},
        "versions": package_versions(),
    })


def evaluate_labeled_set(model: str | Path | None, labeled_set: LabeledSet, *,
                         registry: str | Path | ModelRegistry | None = None, work_dir: str | Path | None = None,
                         tile_size: int | None = None, window: int = 512, stride: int = 256, batch_size: int = 4,
                         precision: str = "fp32", device: str = "auto", iou_threshold: float = 0.5,
                         min_object_pixels: int = 1, save_predictions: str | Path | None = None) -> dict[str, Any]:
    """Score ``model`` (a file, a registry reference, or None for the demo model) on ``labeled_set``.

    ``labeled_set`` is a benchmark folder (a path: generic layout, split ``test`` if present; or a
    ``BenchmarkSet``) or a ``LabeledScenesSpec``, whose scenes are prepared in ``work_dir`` (reused
    across calls with the same inputs; a temporary folder when None) and scored as one pair, or as
    tiles of ``tile_size``. Returns the report ``evaluate-model`` writes, without writing it:
    ``report["pixel"]["f1"]``, ``report["objects"]["f1"]`` and so on. No Prefect run is needed.
    """
    options = Options(window, stride, batch_size, precision, device, iou_threshold, min_object_pixels)
    started = time.perf_counter()
    record = resolve_model(model, registry=registry)
    with tempfile.TemporaryDirectory(prefix="dsqnet-evaluate-") as scratch:
        if isinstance(labeled_set, (LabeledScenesSpec, LabeledScenes)):
            work = Path(work_dir) if work_dir else Path(scratch)
            with said_if_damaged(work):
                benchmark = benchmark_from_scenes(labeled_set, work / "labeled", tile_size, work)
        else:
            benchmark = (labeled_set if isinstance(labeled_set, BenchmarkSet)
                         else BenchmarkSet(str(Path(labeled_set).resolve())))
        scores = score_pairs(record, labeled_pairs(benchmark), options,
                             Path(save_predictions) if save_predictions else None)
    return build_report(record, benchmark, scores, options, {"total": round(time.perf_counter() - started, 3)})


# --------------------------------------------------------------------------------------------------
# Tasks


@task(name="check-model", cache_policy=NO_CACHE)
def check_model(model: str | None, registry: str | None = None) -> ModelRecord:
    return resolve_model(model, registry=registry)


@task(name="prepare-scenes", cache_policy=NO_CACHE)
def prepare_scenes_task(spec: LabeledScenesSpec, work: Path) -> LabeledScenes:
    return prepare_labeled_scenes(spec, work)


@task(name="rasterise-labels", cache_policy=NO_CACHE)
def rasterise_labels_task(labeled: LabeledScenes, work: Path, tile_size: int | None) -> BenchmarkSet:
    return benchmark_from_scenes(labeled, work / "labeled", tile_size)


@task(name="find-pairs", cache_policy=NO_CACHE)
def find_pairs_task(benchmark: BenchmarkSet) -> ChangeDetectionDataset:
    return labeled_pairs(benchmark)


@task(name="score-pairs", cache_policy=NO_CACHE)
def score_pairs_task(model: ModelRecord, pairs: ChangeDetectionDataset, options: Options,
                     predictions: Path | None) -> dict:
    with Progress(len(pairs), f"pairs scored of {len(pairs)}", key="evaluate-progress", unit="pair") as progress:
        with said_in_one_line(lambda err: out_of_memory(err, "the evaluation", str(resolve_device(options.device)),
                                                        options.batch_size, options.window, options.precision)):
            return score_pairs(model, pairs, options, predictions, on_pair=progress.advance)


@task(name="publish-evaluation", cache_policy=NO_CACHE)
def publish_evaluation(run: RunFolder, report: dict) -> Path:
    """``evaluation.json`` in the run folder, committed whole; the metrics table and a summary in Prefect."""
    write_json_atomic(run.staging / REPORT, report)
    create_table_artifact(metrics_table(report), key="evaluation-metrics",
                          description=f"pixel and object scores of {report['model']['ref'] or report['model']['name']}")
    create_markdown_artifact(summary_markdown(report), key="evaluation-summary", description="evaluate-model summary")
    return run.commit() / REPORT


# --------------------------------------------------------------------------------------------------
# The flow


@flow(name="evaluate-model", validate_parameters=False, log_prints=True)
@takes_parameters_of(EvaluateRequest)
@cancellable("evaluate")
def evaluate_model_flow(**params) -> dict:
    """Score a model on labeled data (a benchmark folder, or scenes + label polygons): pixel and object metrics."""
    request = parse_evaluate_request(**params)
    check_inputs(request)  # before any task: a bad model, data folder or --out fails in one line
    return with_output_errors(run_evaluation, request, Path(request.out))


def run_evaluation(request: EvaluateRequest) -> dict:
    timer = StepTimer()
    lap, timings = timer.lap, timer.timings

    out_dir = Path(request.out)
    check_writable(out_dir)
    record = check_model(request.model, request.registry)
    if request.record_metrics and record.ref is None:
        raise ParameterError(f"record_metrics adds scores to a registry record, but model {request.model or 'the demo'}"
                             " is a plain file; name a registered model (name@VERSION) or register it first")
    lap("check model")
    name = request.run_name or evaluation_name(request, record)
    work = out_dir / ".cache" / name
    # a second run of the same work is refused, naming this one; what an earlier one left may be damaged
    with run_lock(out_dir, name), said_if_damaged(work):
        if request.route == "scenes":
            spec = LabeledScenesSpec(catalog=request.catalog, region=request.region, before=request.before,
                                     after=request.after, labels=request.labels, regions=request.regions,
                                     tolerance_days=request.tolerance_days, crs=request.crs, resolution=request.resolution)
            labeled = prepare_scenes_task(spec, work)
            lap("prepare scenes")
            benchmark = rasterise_labels_task(labeled, work, request.tile_size)
            lap("rasterise labels")
        else:
            benchmark = BenchmarkSet(str(Path(request.data).resolve()), request.layout, request.split)
        pairs = find_pairs_task(benchmark)
        options = Options(request.window, request.stride, request.batch_size, request.precision, request.device,
                          request.iou_threshold, request.min_object_pixels)
        with RunFolder(out_dir / name) as run:
            scores = score_pairs_task(record, pairs, options, run.staging / "predictions" if request.save_predictions else None)
            lap("score pairs")
            report = build_report(record, benchmark, scores, options, timings)
            report["run_folder"] = str(out_dir / name)
            path = publish_evaluation(run, report)
        if request.record_metrics:
            ModelRegistry(record.registry).set_metrics(record.name, int(record.version), {name: registry_metrics(report)})
        get_run_logger().info("evaluation written to %s", path)
        return {**report, "json": str(path), "text": summary_text(report)}


# --------------------------------------------------------------------------------------------------
# Helpers


def evaluation_name(request: EvaluateRequest, record: ModelRecord) -> str:
    """``<model>_on_<data>``: the registry reference or file stem, and the folder or region and dates."""
    model = record.ref or Path(record.path).stem
    if request.route == "benchmark":
        data = Path(request.data).resolve().name + (f"-{request.split}" if request.split and
                                                     (Path(request.data) / request.split).is_dir() else "")
    else:
        region = parse_region(request.region, regions_file=request.regions).name
        data = f"{region}_{request.before}_{request.after}"
    return _slug(f"{model}_on_{data}")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "evaluation"


def metrics_table(report: dict) -> list[dict]:
    """One row per level: pixel (counts are pixels) and object (counts are objects)."""
    p, o = report["pixel"], report["objects"]
    matrix = p["confusion_matrix"]

    def r(x):
        return None if x is None else round(x, 4)

    return [
        {"level": "pixel", "precision": r(p["precision"]), "recall": r(p["recall"]), "f1": r(p["f1"]),
         "iou": r(p["iou"]), "kappa": r(p["kappa"]), "true": matrix[1][0] + matrix[1][1],
         "predicted": matrix[0][1] + matrix[1][1], "matched": matrix[1][1]},
        {"level": f"object (IoU >= {o['iou_threshold']})", "precision": r(o["precision"]), "recall": r(o["recall"]),
         "f1": r(o["f1"]), "iou": r(o["mean_matched_iou"]), "kappa": None, "true": o["true_objects"],
         "predicted": o["predicted_objects"], "matched": o["matched"]},
    ]


def registry_metrics(report: dict) -> dict:
    """The compact scores kept in a registry record, under the evaluation's name."""
    keep = ("precision", "recall", "f1", "iou", "kappa")
    return {"evaluated": report["created"], "flow_run_id": report["flow_run_id"], "data": report["data"],
            "pixel": {k: report["pixel"][k] for k in keep},
            "objects": {k: v for k, v in report["objects"].items() if k != "mean_matched_iou"}}


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def summary_markdown(report: dict) -> str:
    model, data, p, o = report["model"], report["data"], report["pixel"], report["objects"]
    where = data["root"] if not data.get("source") else (
        f"{data['source']['region']} {data['source']['before']} → {data['source']['after']} "
        f"(labels {data['source']['labels']})")
    pixels = (f"F1 {_fmt(p['f1'])}, IoU {_fmt(p['iou'])}, precision {_fmt(p['precision'])}, "
              f"recall {_fmt(p['recall'])}, kappa {_fmt(p['kappa'])}")
    objects = (f"F1 {_fmt(o['f1'])}, precision {_fmt(o['precision'])}, recall {_fmt(o['recall'])}; {o['matched']} of "
               f"{o['true_objects']} true objects found, {o['false_positives']} false detections")
    return "\n".join([
        f"# Evaluation of {model['ref'] or model['name']}",
        "",
        f"- **model:** {model['ref'] or model['path']} (sha256 {model['sha256'][:12]})",
        f"- **data:** {where}, {data['pairs']} pair(s)",
        f"- **pixels:** {pixels}",
        f"- **objects** (IoU >= {o['iou_threshold']}): {objects}",
    ])


def summary_text(report: dict) -> str:
    p, o = report["pixel"], report["objects"]
    model = report["model"]["ref"] or report["model"]["path"]
    lines = [
        f"Evaluation of {model} on {report['data']['pairs']} pair(s): {report.get('run_folder', '')}/{REPORT}",
        (f"  pixels:  F1 {_fmt(p['f1'])}  IoU {_fmt(p['iou'])}  precision {_fmt(p['precision'])}  "
         f"recall {_fmt(p['recall'])}  kappa {_fmt(p['kappa'])}"),
        (f"  objects: F1 {_fmt(o['f1'])}  precision {_fmt(o['precision'])}  recall {_fmt(o['recall'])}  "
         f"({o['matched']} of {o['true_objects']} true found, {o['predicted_objects']} predicted, "
         f"IoU >= {o['iou_threshold']})"),
        "  timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in report["timings"].items()),
    ]
    return "\n".join(lines)
