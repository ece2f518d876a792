"""Reading tensors safely, and the one error a model file can raise.

Only two ways of reading tensors are allowed: safetensors, and ``torch.load(weights_only=True)``
for foreign ``.pth`` files. A pickle that carries code is refused, never executed.
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import safe_open


ZIP_MAGIC = b"PK\x03\x04"


class CheckpointError(ValueError):
    """A model file that cannot be used, with the reason and what to do instead."""


def safe_torch_load(path: str | Path) -> Any:
    """``torch.load`` restricted to tensors and plain containers; code-carrying pickles are refused.

    One plain-data class is allowed besides: ``argparse.Namespace``. Checkpoints written by timm's
    training script (which the ViTAE-Transformer project trained its ImageNet models with) store
    the run's arguments in one; it only ever holds attributes, so reading it runs no code.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
    with open(path, "rb") as f:
        head = f.read(4)
    if not head.startswith((ZIP_MAGIC, b"\x80")):  # torch.save's zip archive, or a legacy pickle
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (neither the zip archive torch.save writes nor a "
                              "pickle); give the authors' .pth file, or a .safetensors file")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except RuntimeError as err:  # torch's zip reader on a truncated or damaged archive
        reason = str(err).splitlines()[0].split(". ")[0]
        raise CheckpointError(f"{path} cannot be read as a PyTorch checkpoint ({reason}); the file is truncated or "
                              "corrupt: download or copy it again") from None
    except pickle.UnpicklingError as err:
        # torch's own words suggest weights_only=False, which this project never does: only what it refused is kept
        asked = re.search(r"Unsupported (?:global: GLOBAL \S+|operand \S+)", str(err))
        detail = f" (it asks for {asked[0].removeprefix('Unsupported ').removeprefix('global: ')})" if asked else ""
        raise CheckpointError(
            f"refused to load {path}: it is a pickle that asks to run code or build objects other than "
            f"tensors and plain containers{detail}, and loading it could execute arbitrary code. If you trust "
            "the file, extract its state dict in a separate environment and save it with safetensors "
            "(or re-save it with torch.save(state_dict))"
        ) from None


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a ``.safetensors`` file, or the state dict inside a ``.pth``/``.pt`` file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}
        except Exception as err:  # noqa: BLE001 - safetensors raises its own error types for damaged files
            raise CheckpointError(safetensors_problem(path, err)) from None
    return unwrap_state_dict(safe_torch_load(path), source=str(path))


def safetensors_problem(path: Path, err: Exception) -> str:
    """Why safetensors could not open ``path``. Its words for a file cut short ("incomplete metadata,
    file not fully covered") do not say that an interrupted download or copy is the likely cause, so
    the header is read here to tell that case apart."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            length = int.from_bytes(f.read(8), "little")
            start = f.read(1)
            header = json.loads(start + f.read(length - 1)) if 8 + length <= size else None
    except (OSError, ValueError):
        return f"{path} is not a safetensors file ({err}); DSQNet checkpoints are .safetensors"
    interrupted = "the download or copy was interrupted: fetch it again"
    if header is None:
        if start != b"{" or length > MAX_HEADER:
            return f"{path} is not a safetensors file ({err}); DSQNet checkpoints are .safetensors"
        return f"{path} is cut short: it ends inside its header, at byte {size:,} of {8 + length:,}; {interrupted}"
    expected = 8 + length + max((v["data_offsets"][1] for v in header.values() if isinstance(v, dict)
                                 and len(v.get("data_offsets") or ()) == 2), default=0)
    if size < expected:
        return f"{path} is cut short: it has {size:,} bytes of the {expected:,} its header describes; {interrupted}"
    return f"{path} is a damaged safetensors file ({err}); fetch it again"


MAX_HEADER = 100_000_000  # safetensors' own bound on a header's length


def unwrap_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Find the state dict in the usual wrappers (mmengine's ``state_dict``, Microsoft's ``model``)."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "state_dict_ema"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
        tensors = {_strip_prefix(k, "module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise CheckpointError(f"{source} holds no state dict (expected a dict of tensors, possibly under 'state_dict' or 'model')")


def _strip_prefix(key: str, prefix: str) -> str:
    return key[len(prefix):] if key.startswith(prefix) else key


def load_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with an error that lists what differs, shapes included."""
    check_matches(module.state_dict(), state, source)
    check_finite(state, source)
    module.load_state_dict(state, strict=True)


def check_matches(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise ``CheckpointError`` naming every missing, unexpected and mis-shaped key."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        parts = [f"{title} ({len(items)}): " + ", ".join(items[:8]) + (" ..." if len(items) > 8 else "")
                 for title, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched))
                 if items]
        raise CheckpointError(f"{source} does not match the model it describes ({'; '.join(parts)}); it is damaged, "
                              "or not made for this network: use a file that dsqnet train or dsqnet convert-opencd made")


def check_finite(state: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise ``CheckpointError`` if a floating-point weight holds NaN or infinity: such a network
    maps every pixel to NaN, which a run would report as nothing observed, and no error."""
    bad = [name for name, tensor in state.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        raise CheckpointError(f"{source} holds weights that are not finite numbers (NaN or infinity in {len(bad)} of "
                              f"{len(state)} tensors, first {bad[0]}): the file is damaged or its training diverged; "
                              "use another model file")
