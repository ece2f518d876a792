"""Our model file: safetensors weights with JSON metadata (architecture, band order, normalisation, provenance).

A file alone rebuilds its network: the config travels in the metadata, so no code or pickle is
ever needed to load one.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dsqnet.model import DSQNet, DSQNetConfig
from dsqnet.weights.files import CheckpointError, check_matches, load_strict, safe_torch_load, safetensors_problem
from dsqnet.weights.imagenet import IMAGENET_NORMALIZATION
from dsqnet.weights.opencd import load_opencd

FORMAT = "dsqnet-flows/1"
DEFAULT_METADATA: dict[str, Any] = {"band_order": ["red", "green", "blue"], "normalization": IMAGENET_NORMALIZATION}


def save(model: DSQNet, path: str | Path, metadata: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` as safetensors with JSON metadata (architecture, normalisation, provenance).

    Metadata values must be JSON-serialisable. The file is written aside and renamed, so a crash
    never leaves a half-written checkpoint at ``path``.
    """
    path = Path(path)
    meta = {**DEFAULT_METADATA, **getattr(model, "metadata", {}), **(metadata or {})}
    meta["config"] = model.config.to_dict()
    header = {"format": FORMAT, **{k: json.dumps(v) for k, v in meta.items()}}
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    save_file(tensors, str(tmp), metadata=header)
    tmp.replace(path)
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of one of our checkpoints, without loading its weights."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for non-safetensors files
        raise CheckpointError(safetensors_problem(path, err)) from None
    if header.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a safetensors file but not a DSQNet checkpoint (format {header.get('format')!r}, "
            f"expected {FORMAT!r}); make one with dsqnet train, or from the authors' open-cd .pth checkpoint with "
            "dsqnet convert-opencd"
        )
    return {k: json.loads(v) for k, v in header.items() if k != "format"}


def load(path: str | Path, map_location: str | torch.device = "cpu") -> DSQNet:
    """Rebuild a model from one of our checkpoint files alone; its metadata lands in ``model.metadata``."""
    config, metadata = _config_and_metadata(path)
    model = DSQNet(config)
    with safe_open(str(path), framework="pt", device=str(map_location)) as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
    load_strict(model, state, source=str(path))
    model.metadata = metadata
    return model


def _config_and_metadata(path: str | Path) -> tuple[DSQNetConfig, dict[str, Any]]:
    """The network one of our checkpoint files describes, and its metadata with the defaults filled in."""
    metadata = read_metadata(path)
    return DSQNetConfig.from_dict(metadata.pop("config")), {**DEFAULT_METADATA, **metadata}


def load_model_file(path: str | Path) -> DSQNet:
    """Any model file a user may name: ours (``.safetensors``) or the authors' (``.pth``, open-cd layout)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return load(path)
    return load_opencd(safe_torch_load(path))


@dataclasses.dataclass(frozen=True)
class ModelFileSummary:
    """What a model file holds: the network it builds, its metadata (band order ...) and its size."""

    config: DSQNetConfig
    metadata: dict[str, Any]
    parameters: int


def inspect_model_file(path: str | Path) -> ModelFileSummary:
    """Check that a model file loads, and say what it holds, without reading its weights where possible.

    A flow checks the model a user named before any work starts, and its workers load it again
    anyway. For our safetensors files the header is enough: the format, the config, and every
    tensor's name and shape against the network built on the meta device (no memory), which costs
    a fraction of a full load. The authors' ``.pth`` files have no
    config to read, so they are loaded in full.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        model = load_model_file(path)
        metadata = {**DEFAULT_METADATA, **(getattr(model, "metadata", None) or {})}
        return ModelFileSummary(model.config, metadata, sum(p.numel() for p in model.parameters()))
    config, metadata = _config_and_metadata(path)
    expected, parameters = _meta_state(config)
    with safe_open(str(path), framework="pt") as f:
        shapes = {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
    check_matches(expected, shapes, source=str(path))
    return ModelFileSummary(config, metadata, parameters)


@functools.lru_cache(maxsize=8)
def _meta_state(config: DSQNetConfig) -> tuple[Mapping[str, torch.Tensor], int]:
    """The tensors (on the meta device) and parameter count of ``config``'s network, built once per
    config: a run checks its model two or three times (the command line, then the flow, checks its
    inputs before anything else), and timm's initialisers run even on the meta device, 0.1 s for
    Swin-T on the 2-core CPU."""
    with torch.device("meta"):
        model = DSQNet(config)
    return MappingProxyType(model.state_dict()), sum(p.numel() for p in model.parameters())
