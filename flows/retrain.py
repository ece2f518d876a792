"""``retrain-model``: fine-tune the production model on new labels; promote the result only if it is better.

    check-base -> prepare-labels -> fine-tune -> evaluate (base and candidate, on the holdout and the
    reference set) -> register-candidate -> decide -> publish-retrain

New labels are a benchmark folder, or scenes plus label polygons cut into tiles
(``flows.scoring.labeled_data``). A seeded share of the pairs is held out unless a holdout folder is given.
The candidate always enters the registry (alias ``candidate``) with its scores and lineage, so
every attempt can be traced; it becomes ``production`` only when its holdout F1 beats the base
model's by ``margin`` and, when a frozen reference set is configured, it is not worse there by more
than ``reference_tolerance``. Both models are scored by the same code on the same pairs.

Resumable: the work folder ``<out>/.cache/<run>/`` is named by a hash of the inputs, the prepared
pairs are reused, and training continues from its last checkpoint (``train_state.pt``, every
``checkpoint_interval`` steps); the candidate is registered once per weights file (by hash).
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

import dsqnet
from catalog.store import inputs_hash
from dsqnet.data import find_samples
from dsqnet.data.layouts import LAYOUTS
from dsqnet.predictor import resolve_device
from dsqnet.training import Trainer, load_config

from flows.files.atomic import written_aside
from flows.params.signature import takes_parameters_of
from flows.params.inputs import check_inputs
from flows.evaluate import BenchmarkSet, evaluate_labeled_set
from flows.files.jsonfiles import json_safe, read_json, write_json_atomic
from flows.scoring.labeled_data import LABEL_ENCODING, LabeledScenesSpec, folder_label_encoding, labeled_scenes_to_folder
from flows.runtime.damaged_cache import said_if_damaged
from flows.runtime.versions import code_version, package_versions
from flows.models.resolve import ModelRecord, file_sha256, resolve_model
from flows.models.registry import ModelRegistry, RegisteredModel
from flows.params.retrain import RetrainRequest, parse_retrain_request
from flows.outputs.run_folder import RunFolder, check_writable, run_lock, with_output_errors
from flows.runtime.out_of_memory import out_of_memory, said_in_one_line, training_out_of_memory
from flows.runtime.interrupts import cancellable
from flows.runtime import heartbeats

heartbeats.install()  # a run ends as soon as its work is done, not up to a second later

REPORT = "retrain.json"
PREPARED = "prepared.json"
COMPARED = ("f1", "iou", "precision", "recall")


@dataclass(frozen=True)
class PreparedLabels:
    """The pairs to learn from (``root/train``) and the sets to judge on."""

    root: str
    label_encoding: str | None
    train_pairs: int
    holdout: BenchmarkSet
    reference: BenchmarkSet | None
    source: dict


@dataclass(frozen=True)
class Decision:
    promote: bool
    reasons: tuple[str, ...]


# --------------------------------------------------------------------------------------------------
# Building blocks


def split_names(names: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """A seeded split into (train, holdout); both get at least one pair."""
    if len(names) < 2:
        raise ValueError(f"{len(names)} labeled pair(s) cannot be split into training and holdout; give more "
                         "labels, or a holdout folder (parameter holdout) and learn from all of them")
    order = np.random.default_rng(seed).permutation(sorted(names))
    held = min(max(1, round(fraction * len(names))), len(names) - 1)
    return sorted(order[held:].tolist()), sorted(order[:held].tolist())


def link_pairs(samples: dict, names: list[str], folder: Path) -> None:
    """``folder/{A,B,label}`` holding the named pairs (hard links where possible, else copies)."""
    for sub in ("A", "B", "label"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for name in names:
        sample = samples[name]
        for sub, source in (("A", sample.before), ("B", sample.after), ("label", sample.label)):
            target = folder / sub / f"{name}{Path(source).suffix}"
            try:
                os.link(source, target)
            except OSError:
                shutil.copy2(source, target)


def prepare_labels(request: RetrainRequest, work: Path) -> PreparedLabels:
    """New labels -> ``work/labels/train`` (and ``holdout``) in the generic layout; reused when present."""
    folder = work / "labels"
    if (folder / PREPARED).is_file():
        return _prepared_from_json(read_json(folder / PREPARED))
    with written_aside(folder) as staging:
        if request.route == "scenes":
            spec = LabeledScenesSpec(catalog=request.catalog, region=request.region, before=request.before,
                                     after=request.after, labels=request.labels, regions=request.regions,
                                     tolerance_days=request.tolerance_days)
            tiles = labeled_scenes_to_folder(spec, work / "tiles", tile_size=request.tile_size, work_dir=work,
                                             full_tiles=False)  # no pixel in both training and holdout
            root, layout, split, encoding = tiles.root, "generic", None, LABEL_ENCODING
            source = {"kind": "scenes", **spec.to_dict(), "tile_size": request.tile_size}
        else:
            root, layout, split = Path(request.data).resolve(), request.layout, request.split
            if split is None and LAYOUTS[layout].splits:
                split = "train"
            encoding = folder_label_encoding(root) or (None if layout == "generic" else LAYOUTS[layout].labels)
            source = {"kind": "benchmark", "root": str(root), "layout": layout, "split": split}
        samples = {s.name: s for s in find_samples(root, layout, split)}
        if request.holdout:
            train, held = sorted(samples), []
            holdout = BenchmarkSet(str(Path(request.holdout).resolve()), request.layout, None)
        else:
            train, held = split_names(list(samples), request.holdout_fraction, request.seed)
            link_pairs(samples, held, staging / "holdout")
            holdout = BenchmarkSet(str(folder / "holdout"), "generic", None, encoding,
                                   source={**source, "held_out": len(held), "seed": request.seed})
        link_pairs(samples, train, staging / "train")
        reference = BenchmarkSet(str(Path(request.reference).resolve()), request.layout, None) if request.reference else None
        prepared = PreparedLabels(str(folder), encoding, len(train), holdout, reference,
                                  {**source, "pairs": len(samples), "train": train, "holdout": held})
        write_json_atomic(staging / PREPARED, asdict(prepared))
    return prepared


def _prepared_from_json(data: dict) -> PreparedLabels:
    return PreparedLabels(
        root=data["root"], label_encoding=data["label_encoding"], train_pairs=data["train_pairs"],
        holdout=BenchmarkSet(**data["holdout"]),
        reference=BenchmarkSet(**data["reference"]) if data["reference"] else None, source=data["source"])


def fine_tune(request: RetrainRequest, base: ModelRecord, labels: PreparedLabels, work: Path) -> dict[str, Any]:
    """Train from the base model on the training pairs; continues from ``train_state.pt`` when one exists."""
    config = load_config(request.config)
    overrides = {"max_iters": request.max_iters, "batch_size": request.batch_size}
    config = config.with_updates(
        model={"init_from": base.path, "overrides": {}},
        data={"root": labels.root, "layout": "generic", "train_split": "train", "val_split": None,
              "label_encoding": labels.label_encoding},
        schedule={k: v for k, v in overrides.items() if v is not None},
        runtime={"work_dir": str(work / "train"), "seed": request.seed},
        **({"optim": {"lr": request.lr}} if request.lr else {}),
    )
    started = time.perf_counter()
    trainer = Trainer(config, progress=False)
    with said_in_one_line(lambda err: training_out_of_memory(
            err, str(trainer.device), config.schedule.batch_size, config.schedule.accumulate, trainer.precision,
            "--batch-size (parameter 'batch_size', now {now})",
            f"schedule.accumulate in the config {request.config} (now {{now}})")):
        result = trainer.run(resume=(work / "train" / "train_state.pt").is_file())
    return {"weights": str(result.last), "steps": result.step, "resumed_from_step": result.resumed_from,
            "seconds": round(time.perf_counter() - started, 2), "config": request.config,
            "recipe": config.to_dict()}


def judge(model: str, labels: PreparedLabels, request: RetrainRequest, registry: str | None) -> dict[str, Any]:
    """The model's scores on the holdout set (and the reference set), by ``evaluate-model``'s code."""
    options = {"window": request.window, "stride": request.stride, "batch_size": request.eval_batch_size,
               "precision": request.precision, "device": request.device}
    sets = {"holdout": labels.holdout, **({"reference": labels.reference} if labels.reference else {})}
    with said_in_one_line(lambda err: out_of_memory(err, "the evaluation", str(resolve_device(request.device)),
                                                    request.eval_batch_size, request.window, request.precision,
                                                    batch_option="eval_batch_size")):
        return {name: _scores(evaluate_labeled_set(model, data, registry=registry, **options))
                for name, data in sets.items()}


def _scores(report: dict) -> dict[str, Any]:
    return {**{k: report["pixel"][k] for k in COMPARED}, "object_f1": report["objects"]["f1"],
            "pairs": report["data"]["pairs"]}


def decide(base: dict, candidate: dict, margin: float, reference_tolerance: float) -> Decision:
    """Promote only a candidate that beats the base on the holdout and holds its own on the reference."""
    reasons, promote = [], True
    gain = _f1(candidate["holdout"]) - _f1(base["holdout"])
    if gain > 0 and gain >= margin:
        reasons.append(f"holdout F1 {_f1(candidate['holdout']):.4f} beats the base's {_f1(base['holdout']):.4f} "
                       f"by {gain:+.4f} (margin {margin})")
    else:
        promote = False
        reasons.append(f"holdout F1 {_f1(candidate['holdout']):.4f} against the base's {_f1(base['holdout']):.4f}: "
                       f"a gain of {gain:+.4f}, short of the margin {margin}")
    if "reference" in candidate:
        loss = _f1(base["reference"]) - _f1(candidate["reference"])
        if loss > reference_tolerance:
            promote = False
            reasons.append(f"reference F1 falls from {_f1(base['reference']):.4f} to "
                           f"{_f1(candidate['reference']):.4f} (tolerance {reference_tolerance})")
        else:
            reasons.append(f"reference F1 {_f1(candidate['reference']):.4f} against the base's "
                           f"{_f1(base['reference']):.4f} (tolerance {reference_tolerance})")
    return Decision(promote, tuple(reasons))


def _f1(scores: dict) -> float:
    """F1 with "no change predicted and none there" (NaN, None) counted as 0: it cannot win a comparison."""
    value = scores.get("f1")
    return float(value) if value is not None and np.isfinite(value) else 0.0


def register_candidate(registry: ModelRegistry, request: RetrainRequest, base: ModelRecord, training: dict,
                       labels: PreparedLabels, scores: dict) -> RegisteredModel:
    """The candidate as the next version of ``name`` (alias ``candidate``); the same weights only once."""
    weights = Path(training["weights"])
    digest = file_sha256(weights)
    existing = [m for m in registry.list(request.name) if m.sha256 == digest]
    metrics = {"retrain": scores}
    if existing:
        registry.set_metrics(request.name, existing[0].version, metrics)
        return registry.promote(request.name, existing[0].version, "candidate")
    lineage = {"base_model": base.ref or base.path, "base_sha256": base.sha256, "training_data": labels.source,
               "config": training["config"], "steps": training["steps"],
               "code_version": code_version(Path(dsqnet.__file__).parent), "flow_run_id": _flow_run_id()}
    return registry.register(weights, name=request.name, metrics=metrics, lineage=lineage, aliases=("candidate",))


def _flow_run_id() -> str | None:
    return str(flow_run.get_id()) if flow_run.get_id() else None


# --------------------------------------------------------------------------------------------------
# Tasks


@task(name="check-base", cache_policy=NO_CACHE)
def check_base(request: RetrainRequest) -> ModelRecord:
    return resolve_model(request.base_ref, registry=request.registry)


@task(name="prepare-labels", cache_policy=NO_CACHE)
def prepare_labels_task(request: RetrainRequest, work: Path) -> PreparedLabels:
    return prepare_labels(request, work)


@task(name="fine-tune", cache_policy=NO_CACHE)
def fine_tune_task(request: RetrainRequest, base: ModelRecord, labels: PreparedLabels, work: Path) -> dict:
    return fine_tune(request, base, labels, work)


@task(name="evaluate", cache_policy=NO_CACHE, task_run_name="evaluate-{which}")
def evaluate_task(which: str, model: str, labels: PreparedLabels, request: RetrainRequest) -> dict:
    return judge(model, labels, request, request.registry)


@task(name="register-candidate", cache_policy=NO_CACHE)
def register_task(request: RetrainRequest, base: ModelRecord, training: dict, labels: PreparedLabels,
                  scores: dict) -> RegisteredModel:
    return register_candidate(ModelRegistry(request.registry), request, base, training, labels, scores)


@task(name="decide", cache_policy=NO_CACHE)
def decide_task(request: RetrainRequest, candidate: RegisteredModel, scores: dict) -> Decision:
    decision = decide(scores["base"], scores["candidate"], request.margin, request.reference_tolerance)
    if decision.promote:
        ModelRegistry(request.registry).promote(candidate.name, candidate.version, request.alias)
    return decision


@task(name="publish-retrain", cache_policy=NO_CACHE)
def publish_retrain(run: RunFolder, report: dict) -> Path:
    write_json_atomic(run.staging / REPORT, report)
    create_table_artifact(comparison_table(report["scores"]), key="retrain-comparison",
                          description="base and candidate on the same pairs")
    create_markdown_artifact(summary_markdown(report), key="retrain-decision", description="retrain-model decision")
    return run.commit() / REPORT


# --------------------------------------------------------------------------------------------------
# The flow


@flow(name="retrain-model", validate_parameters=False, log_prints=True)
@takes_parameters_of(RetrainRequest)
@cancellable("retrain")
def retrain_model(**params) -> dict:
    """Fine-tune ``base`` (default NAME@production) on new labels; register the candidate, promote it if better."""
    request = parse_retrain_request(**params)
    check_inputs(request)  # before any task: a bad base model, data folder or --out fails in one line
    return with_output_errors(run_retrain, request, Path(request.out))


def run_retrain(request: RetrainRequest) -> dict:
    out_dir = Path(request.out)
    check_writable(out_dir)
    started = time.perf_counter()
    base = check_base(request)
    name = request.run_name or retrain_name(request, base)
    work = out_dir / ".cache" / name
    # a second run of the same work is refused, naming this one; what an earlier one left may be damaged
    with run_lock(out_dir, name), said_if_damaged(work):
        work.mkdir(parents=True, exist_ok=True)
        labels = prepare_labels_task(request, work)
        print(f"{labels.train_pairs} pairs to learn from, {labels.holdout.root} to judge on"
              + (f", reference {labels.reference.root}" if labels.reference else ""))
        training = fine_tune_task(request, base, labels, work)
        if training["resumed_from_step"]:
            print(f"training continued from step {training['resumed_from_step']}")
        scores = {"base": evaluate_task("base", base.path, labels, request),
                  "candidate": evaluate_task("candidate", training["weights"], labels, request)}
        candidate = register_task(request, base, training, labels, scores)
        decision = decide_task(request, candidate, scores)
        report = json_safe({
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "flow_run_id": _flow_run_id(),
            "run_folder": str(out_dir / name), "parameters": request.model_dump(), "base": base.to_dict(),
            "candidate": candidate.to_dict(), "training": {k: v for k, v in training.items() if k != "recipe"},
            "recipe": training["recipe"], "data": asdict(labels), "scores": scores,
            "decision": {"promoted": decision.promote, "alias": request.alias, "reasons": list(decision.reasons)},
            "seconds": round(time.perf_counter() - started, 2), "versions": package_versions(),
        })
        with RunFolder(out_dir / name) as run:
            path = publish_retrain(run, report)
        get_run_logger().info("retrain report written to %s", path)
        return {**report, "json": str(path), "text": summary_text(report)}


# --------------------------------------------------------------------------------------------------
# Helpers


def retrain_name(request: RetrainRequest, base: ModelRecord) -> str:
    """``retrain_<name>_<hash>``: the same inputs give the same work folder, which is what resumes."""
    keys = {k: v for k, v in request.model_dump().items()
            if k not in ("out", "run_name", "margin", "reference_tolerance", "alias", "eval_batch_size")}
    return f"retrain_{request.name}_{inputs_hash({'request': keys, 'base': base.sha256})[:10]}"


def comparison_table(scores: dict) -> list[dict[str, Any]]:
    rows = []
    for data in scores["base"]:
        for metric in (*COMPARED, "object_f1"):
            b, c = scores["base"][data][metric], scores["candidate"][data][metric]
            gain = None if b is None or c is None else round(c - b, 4)
            rows.append({"set": data, "metric": metric, "base": b, "candidate": c, "gain": gain})
    return json_safe(rows)


def summary_markdown(report: dict) -> str:
    decision = report["decision"]
    verdict = (f"**promoted** to `{decision['alias']}`" if decision["promoted"]
               else f"**not promoted**; `{decision['alias']}` stays {report['base']['ref'] or report['base']['path']}")
    lines = [f"# Retrain {report['parameters']['name']}: {report['candidate']['ref']} {verdict}", "",
             f"- base: `{report['base']['ref'] or report['base']['path']}`",
             (f"- trained {report['training']['steps']} steps on {report['data']['train_pairs']} pairs "
              f"({report['training']['seconds']} s{', resumed' if report['training']['resumed_from_step'] else ''})"),
             *[f"- {reason}" for reason in decision["reasons"]]]
    return "\n".join(lines)


def summary_text(report: dict) -> str:
    decision = report["decision"]
    lines = [f"Candidate {report['candidate']['ref']} "
             + (f"promoted to {decision['alias']}" if decision["promoted"] else "not promoted"),
             *[f"  {reason}" for reason in decision["reasons"]],
             f"  report: {report['run_folder']}/{REPORT}"]
    return "\n".join(lines)
