"""Training configuration: nested dataclasses read from YAML, with errors that name the bad key.

The defaults are the paper's recipe (spec section 4): AdamW lr 1e-4, weight decay 0.01, linear
warm-up over 1000 iterations then linear decay to 0 at 80k, batch 8, 512 crops, OHEM 0.7 / 100k,
validation and checkpoints every 4000 iterations.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..data.transforms import AugmentConfig


@dataclass(frozen=True)
class ModelSection:
    name: str = "dsqnet_swin_t"
    overrides: dict = field(default_factory=dict)  # e.g. {head_width: 64}
    backbone_weights: str | None = None  # local ImageNet weights of the backbone (Swin or ViTAEv2)
    init_from: str | None = None  # start from a checkpoint (ours or the authors'), for fine-tuning


@dataclass(frozen=True)
class DataSection:
    root: str = "data/LEVIR-CD"
    layout: str = "levir-cd"
    train_split: str | None = "train"  # None: the whole root, no split folder
    val_split: str | None = "val"
    num_workers: int = 4
    # "zero-one" or "threshold" overrides the layout's rule; needed for 0/1/255 labels that happen to
    # hold no 1 (the auto rule would read such 255s as change rather than ignore)
    label_encoding: str | None = None


@dataclass(frozen=True)
class LossSection:
    ohem_thresh: float = 0.7
    ohem_min_kept: int = 100_000


@dataclass(frozen=True)
class OptimSection:
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_iters: int = 1000
    warmup_factor: float = 1e-6
    poly_power: float = 1.0
    min_lr: float = 0.0


@dataclass(frozen=True)
class ScheduleSection:
    max_iters: int = 80_000
    batch_size: int = 8
    accumulate: int = 1  # micro-batches per step: batch_size / accumulate crops go through at once
    val_interval: int = 4000
    checkpoint_interval: int = 4000
    keep_checkpoints: int = 2
    log_interval: int = 50


@dataclass(frozen=True)
class EvalSection:
    window: int = 512
    stride: int = 256
    batch_size: int = 4


@dataclass(frozen=True)
class RuntimeSection:
    seed: int = 0
    device: str = "auto"  # auto: CUDA when present
    precision: str = "auto"  # auto: bf16 (or fp16) autocast on CUDA, fp32 on CPU; or fp32 | bf16 | fp16
    work_dir: str = "runs/train"
    tensorboard: bool = False


@dataclass(frozen=True)
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossSection = field(default_factory=LossSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    eval: EvalSection = field(default_factory=EvalSection)
    runtime: RuntimeSection = field(default_factory=RuntimeSection)

    def __post_init__(self) -> None:
        out_of_range = [f"{key} must be {need}, got {value!r}" for key, value, fits, need in self._ranges()
                        if not (value == value and fits(value))]  # value != value: a YAML .nan
        if out_of_range:
            raise ValueError("; ".join(out_of_range))
        s = self.schedule
        if s.batch_size % s.accumulate:
            raise ValueError(f"schedule.batch_size {s.batch_size} is not a multiple of schedule.accumulate {s.accumulate}")
        if self.data.label_encoding not in (None, "zero-one", "threshold"):
            raise ValueError(f"data.label_encoding must be zero-one or threshold (or left out), got {self.data.label_encoding!r}")
        if self.runtime.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"runtime.precision must be auto, fp32, bf16 or fp16, got {self.runtime.precision!r}")

    def _ranges(self) -> list[tuple[str, Any, Any, str]]:
        """Each number the recipe needs in a range, with the test and its words: out of range, torch
        or the scheduler would fail late, with a message that names no key (or train on silently)."""
        positive, at_least_0 = (lambda v: v > 0, "positive"), (lambda v: v >= 0, "0 or more")
        o, sc, lo, ev = self.optim, self.schedule, self.loss, self.eval
        return [
            ("optim.lr", o.lr, *positive), ("optim.weight_decay", o.weight_decay, *at_least_0),
            ("optim.eps", o.eps, *positive), ("optim.warmup_iters", o.warmup_iters, *at_least_0),
            ("optim.warmup_factor", o.warmup_factor, *positive), ("optim.poly_power", o.poly_power, *positive),
            ("optim.min_lr", o.min_lr, *at_least_0),
            ("optim.betas", o.betas, lambda b: len(b) == 2 and all(0 <= x < 1 for x in b), "two numbers in [0, 1)"),
            ("schedule.max_iters", sc.max_iters, *positive), ("schedule.batch_size", sc.batch_size, *positive),
            ("schedule.accumulate", sc.accumulate, *positive), ("schedule.val_interval", sc.val_interval, *positive),
            ("schedule.checkpoint_interval", sc.checkpoint_interval, *positive),
            ("schedule.keep_checkpoints", sc.keep_checkpoints, *positive),
            ("schedule.log_interval", sc.log_interval, *positive),
            ("loss.ohem_thresh", lo.ohem_thresh, lambda v: 0 < v <= 1, "in (0, 1]"),
            ("loss.ohem_min_kept", lo.ohem_min_kept, *at_least_0),
            ("eval.window", ev.window, *positive), ("eval.batch_size", ev.batch_size, *positive),
            ("eval.stride", ev.stride, lambda v: 0 < v <= ev.window, f"positive and at most eval.window ({ev.window})"),
            ("data.num_workers", self.data.num_workers, *at_least_0),
        ]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def with_updates(self, **sections: dict[str, Any]) -> "TrainConfig":
        """A copy with some fields of some sections replaced, e.g. ``runtime={"work_dir": "x"}``."""
        current = self.to_dict()
        return from_dict({**current, **{name: {**current[name], **values} for name, values in sections.items()}})


def from_dict(data: dict[str, Any]) -> TrainConfig:
    sections = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    unknown = set(data) - set(sections)
    if unknown:
        raise ValueError(f"unknown config section(s) {sorted(unknown)}; known: {sorted(sections)}")
    built = {}
    for f in dataclasses.fields(TrainConfig):
        cls = f.default_factory  # the section's dataclass
        values = data.get(f.name) or {}
        known = {x.name for x in dataclasses.fields(cls)}
        bad = set(values) - known
        if bad:
            raise ValueError(f"unknown key(s) {sorted(bad)} in section '{f.name}'; known: {sorted(known)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        hints = typing.get_type_hints(cls)
        for key, value in list(values.items()):
            if value is None and hints[key] is dict:  # ``overrides:`` left empty in the YAML: none
                values[key] = value = {}
            if not _has_type(value, hints[key]):
                raise ValueError(f"{f.name}.{key} must be {_type_name(hints[key])}, got {value!r}")
        built[f.name] = cls(**values)
    return TrainConfig(**built)


def _has_type(value: Any, hint: Any) -> bool:
    """Whether a YAML value fits a field's annotation: an int is a float too, a bool is no number."""
    if hint is Any:
        return True
    options = _options(hint)
    for option in options:
        origin = typing.get_origin(option) or option
        if option is type(None) and value is None:
            return True
        if origin is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if origin in (str, bool, dict, tuple) and isinstance(value, origin):
            return True
    return False


def _options(hint: Any) -> tuple[Any, ...]:
    """The types a hint allows: each member of ``A | B``, or the hint alone."""
    union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    return typing.get_args(hint) if union else (hint,)


def _type_name(hint: Any) -> str:
    names = {int: "a whole number", float: "a number", str: "text", bool: "true or false", dict: "a mapping",
             tuple: "a list", type(None): "null"}
    options = _options(hint)
    return " or ".join(names.get(typing.get_origin(o) or o, str(o)) for o in options)


def bundled_configs() -> list[str]:
    """Names of the configs shipped with the package (``dsqnet train --config NAME``)."""
    return sorted(p.name[: -len(".yaml")] for p in resources.files("dsqnet.configs").iterdir() if p.name.endswith(".yaml"))


def load_config(name_or_path: str | Path) -> TrainConfig:
    """A YAML file, or the name of a bundled config such as ``levir-cd_swin-t``."""
    path = Path(name_or_path)
    if path.is_file():
        text = path.read_text()
    elif str(name_or_path) in bundled_configs():
        text = resources.files("dsqnet.configs").joinpath(f"{name_or_path}.yaml").read_text()
    else:
        raise ValueError(
            f"config {name_or_path} is neither a file nor a bundled config; bundled: {', '.join(bundled_configs())}"
        )
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"config {name_or_path} is not valid YAML ({yaml_problem(err)})") from None
    return from_dict(data)


def yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's error in one line: where, then what (its own text spans lines and quotes the source)."""
    mark = getattr(err, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    return where + (getattr(err, "problem", None) or str(err).splitlines()[0])
