"""The training loop: the paper's recipe with gradient accumulation, mixed precision and exact resume.

A run keeps everything in its work folder:

    last.safetensors      the latest weights (our checkpoint format, with the config and step)
    iter_<N>.safetensors  periodic checkpoints (the newest ``keep_checkpoints`` are kept)
    best.safetensors      the best validation mIoU so far, as the reference selects
    train_state.pt        optimiser, step, RNG and best score: what ``resume`` needs
    log.jsonl             one JSON object per logged step and per validation

Resuming restores the weights, the optimiser, the step and the torch RNG; the data stream is a pure
function of (seed, sample number), so the resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader

from ..weights import files as weight_files
from ..weights import model_file
from ..data import ChangeDetectionDataset, TrainingStream, collate_pairs, find_samples
from ..data.dataset import label_encoding_for
from ..evaluation import evaluate_model
from ..losses import OHEMCrossEntropy
from ..model import DSQNet, build_model
from ..predictor import InputNormalizer, Predictor, resolve_device, warn_if_bf16_is_emulated
from .config import TrainConfig
from .schedule import lr_factor

STATE_FILE = "train_state.pt"


@dataclass
class TrainResult:
    step: int
    work_dir: Path
    last: Path
    best: Path | None
    best_miou: float | None
    resumed_from: int = 0  # the step a resumed run continued from (0: it started afresh)


class Trainer:
    """``Trainer(config).run(resume=False)``; ``on_step`` is called after every step (tests use it
    to stop a run midway)."""

    def __init__(self, config: TrainConfig, on_step: Callable[[int, dict], None] | None = None,
                 progress: bool = True) -> None:
        self.config = config
        self.work_dir = Path(config.runtime.work_dir)
        self.device = resolve_device(config.runtime.device)
        self.precision = _resolve_precision(config.runtime.precision, self.device)
        self.on_step = on_step
        self.progress = progress

    # --------------------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> TrainResult:
        cfg = self.config
        self.work_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.runtime.seed)
        model = self._build_model().to(self.device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas,
                                      eps=cfg.optim.eps, weight_decay=cfg.optim.weight_decay)
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        start, best = 0, {"miou": None, "step": None}
        if resume:
            start, best = self._restore(model, optimizer, scaler)

        train_pairs = self._dataset(cfg.data.train_split)
        val_pairs = self._dataset(cfg.data.val_split) if cfg.data.val_split else None
        micro = cfg.schedule.batch_size // cfg.schedule.accumulate
        stream = TrainingStream(train_pairs, cfg.augment, cfg.runtime.seed, cfg.schedule.max_iters * cfg.schedule.batch_size)
        loader = DataLoader(
            stream, batch_size=micro, sampler=range(start * cfg.schedule.batch_size, len(stream)),
            num_workers=cfg.data.num_workers, collate_fn=collate_pairs, pin_memory=self.device.type == "cuda",
            generator=torch.Generator(),  # keep the loader from drawing on the global RNG (exact resume)
            persistent_workers=False,
        )
        criterion = OHEMCrossEntropy(cfg.loss.ohem_thresh, cfg.loss.ohem_min_kept)
        normalize = InputNormalizer.for_model(model, self.device)
        model.train()
        log = _JsonLog(self.work_dir / "log.jsonl", self.work_dir if cfg.runtime.tensorboard else None)
        bar = _ProgressBar(start, cfg.schedule.max_iters, enabled=self.progress)
        batches = iter(loader)
        window_start, window_steps = time.perf_counter(), 0

        try:  # a step that fails (out of memory, a bad loss) still closes the bar's line and the log
            for step in range(start, cfg.schedule.max_iters):
                lr = self._set_lr(optimizer, step)
                micro_batches = [next(batches) for _ in range(cfg.schedule.accumulate)]
                step_loss = train_step(model, optimizer, scaler, criterion, normalize, micro_batches, self.precision)
                if not math.isfinite(step_loss):
                    raise FloatingPointError(f"loss became {step_loss} at step {step}; lower optim.lr or use fp32")
                window_steps += 1
                done = step + 1
                record = {"step": done, "loss": step_loss, "lr": lr}

                if done % cfg.schedule.log_interval == 0 or done == cfg.schedule.max_iters:
                    elapsed = time.perf_counter() - window_start
                    record["it_per_s"] = window_steps / elapsed if elapsed > 0 else None
                    log.write(record)
                    window_start, window_steps = time.perf_counter(), 0
                bar.update(record)

                validate = done % cfg.schedule.val_interval == 0 or done == cfg.schedule.max_iters
                if val_pairs is not None and validate:
                    scores = self._validate(model, val_pairs)
                    log.write({"step": done, "val": scores})
                    if best["miou"] is None or scores["miou"] > best["miou"]:
                        best = {"miou": scores["miou"], "step": done}
                        self._save_weights(model, self.work_dir / "best.safetensors", done, scores)
                    model.train()
                if done % cfg.schedule.checkpoint_interval == 0 or done == cfg.schedule.max_iters:
                    self._checkpoint(model, optimizer, scaler, done, best)
                if self.on_step is not None:
                    self.on_step(done, record)
        finally:
            bar.close()
            log.close()
        best_path = self.work_dir / "best.safetensors"
        return TrainResult(cfg.schedule.max_iters, self.work_dir, self.work_dir / "last.safetensors",
                           best_path if best_path.exists() else None, best["miou"], resumed_from=start)

    # --------------------------------------------------------------------------------------------
    def _build_model(self) -> DSQNet:
        m = self.config.model
        if m.init_from:
            model = model_file.load_model_file(m.init_from)
            if m.overrides:
                raise ValueError("model.overrides cannot change a model loaded with model.init_from")
            return model
        return build_model(m.name, pretrained_backbone=m.backbone_weights, **m.overrides)

    def _dataset(self, split: str | None) -> ChangeDetectionDataset:
        d = self.config.data
        samples = find_samples(d.root, d.layout, split)
        return ChangeDetectionDataset(samples, d.label_encoding or label_encoding_for(d.layout, samples))

    def _set_lr(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        o, s = self.config.optim, self.config.schedule
        lr = o.lr * lr_factor(step, s.max_iters, o.warmup_iters, o.warmup_factor, o.poly_power, o.min_lr / o.lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _validate(self, model: DSQNet, pairs: ChangeDetectionDataset) -> dict:
        e = self.config.eval
        # eager: the weights change between validations, and compiling would cost more than it saves
        predictor = Predictor(model, device=self.device, precision=self.precision, compile=False)
        return evaluate_model(predictor, pairs, window=e.window, stride=e.stride, batch_size=e.batch_size)

    def _save_weights(self, model: DSQNet, path: Path, step: int, scores: dict | None = None) -> None:
        metadata: dict[str, Any] = {"training": {"config": self.config.to_dict(), "step": step,
                                                 "data": {"root": self.config.data.root, "layout": self.config.data.layout}}}
        if scores is not None:
            metadata["metrics"] = {"split": self.config.data.val_split, **{k: v for k, v in scores.items() if k != "per_class"}}
        model_file.save(model, path, metadata=metadata)

    def _checkpoint(self, model: DSQNet, optimizer, scaler, step: int, best: dict) -> None:
        self._save_weights(model, self.work_dir / "last.safetensors", step)
        self._save_weights(model, self.work_dir / f"iter_{step}.safetensors", step)
        kept = sorted(self.work_dir.glob("iter_*.safetensors"), key=lambda p: int(p.stem.split("_")[1]))
        for old in kept[: -self.config.schedule.keep_checkpoints]:
            old.unlink()
        state = {
            "step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "torch_rng": torch.get_rng_state(), "best_miou": best["miou"], "best_step": best["step"],
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }
        tmp = self.work_dir / f".{STATE_FILE}.partial"
        torch.save(state, tmp)
        tmp.replace(self.work_dir / STATE_FILE)

    def _restore(self, model: DSQNet, optimizer, scaler) -> tuple[int, dict]:
        path = self.work_dir / STATE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"cannot resume: {path} does not exist (no checkpoint was written in {self.work_dir})")
        fix = "remove it to train from the first step (the checkpoints beside it are kept)"
        try:
            state = weight_files.safe_torch_load(path)
            weights, optimizer_state, scaler_state = state["model"], state["optimizer"], state["scaler"]
            rng, step = state["torch_rng"], int(state["step"])
            best = {"miou": state["best_miou"], "step": state["best_step"]}
        except weight_files.CheckpointError as err:  # cut short
            raise weight_files.CheckpointError(f"the training state {path} cannot be read ({str(err).split('; ')[0]}): "
                                               f"{fix}") from None
        except (KeyError, TypeError, ValueError) as err:  # another file under its name
            raise weight_files.CheckpointError(f"{path} is not a training state of this trainer ({type(err).__name__}: "
                                               f"{err}): {fix}") from None
        weight_files.load_strict(model, weights, source=str(path))
        optimizer.load_state_dict(optimizer_state)
        scaler.load_state_dict(scaler_state)
        torch.set_rng_state(rng)
        if state.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        return step, best


_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def train_step(model: DSQNet, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               criterion: torch.nn.Module, normalize: InputNormalizer, micro_batches: list[dict],
               precision: str) -> float:
    """One optimiser step over the micro-batches of one batch; returns the batch's loss."""
    device = normalize.device
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for batch in micro_batches:
        valid = batch["valid"].to(device)  # padding is 0 after normalisation, as the reference
        before, after = normalize(batch["before"]) * valid, normalize(batch["after"]) * valid
        labels = batch["label"].to(device)
        with torch.autocast(device.type, dtype=_AUTOCAST.get(precision), enabled=precision != "fp32"):
            logits = model(before, after)
        loss = criterion(logits.float(), labels) / len(micro_batches)
        scaler.scale(loss).backward()
        total += float(loss.detach())
    scaler.step(optimizer)
    scaler.update()
    return total


def _resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("fp16 training needs CUDA; use runtime.precision bf16 on CPU")
    warn_if_bf16_is_emulated(precision, device)
    return precision


class _JsonLog:
    """Append-only JSON lines, plus TensorBoard scalars when a folder is given."""

    def __init__(self, path: Path, tensorboard_dir: Path | None) -> None:
        self.file = open(path, "a")
        self.writer = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ValueError("runtime.tensorboard needs the tensorboard package: pip install tensorboard") from None
            self.writer = SummaryWriter(str(tensorboard_dir / "tensorboard"))

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.writer is not None:
            for key, value in _flatten(record).items():
                if key != "step" and isinstance(value, (int, float)) and value is not None:
                    self.writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        self.file.close()
        if self.writer is not None:
            self.writer.close()


def _flatten(record: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


class _ProgressBar:
    """A tqdm bar showing loss, learning rate and iterations/s; silent when disabled."""

    def __init__(self, start: int, total: int, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="it", dynamic_ncols=True)

    def update(self, record: dict) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
