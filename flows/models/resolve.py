"""Which model a run uses, checked before any worker starts: it exists, is a model, fits the bands.

A model is named by a file path or by a registry reference (``name@3``, ``name@production``, or a
bare registered ``name``; see ``flows.models.registry``). Every output records the model's name, version
and the hash of its file, so a change map can always be traced to the exact weights that made it;
for a registry model these are the registry's name and version, and the file is checked against
the sha256 recorded when it was registered.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from dsqnet.weights.files import CheckpointError

from dsqnet.weights.model_file import inspect_model_file

from flows.models.registry import ModelRegistry, RegisteredModel, RegistryError, file_sha256, looks_like_ref
from flows.runtime.user_errors import UserError

DEMO_MODEL = Path(__file__).resolve().parents[1] / "assets" / "dsqnet_demo.safetensors"

__all__ = ["DEMO_MODEL", "ModelError", "ModelRecord", "file_sha256", "locate_model", "resolve_model"]


class ModelError(UserError, ValueError):
    """A model that cannot be used for this run; the message says why and what to do."""


@dataclass(frozen=True)
class ModelRecord:
    """The model of a run. ``name`` and ``version`` are the registry's for a registry model
    (``ref`` is then ``name@version`` and ``requested`` what the user wrote, e.g. ``name@production``);
    for a plain file they are the architecture and the checkpoint's own version, as before."""

    path: str
    name: str
    version: str
    sha256: str
    band_order: tuple[str, ...]
    parameters: int
    architecture: str = ""
    ref: str | None = None
    requested: str | None = None
    registry: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def locate_model(spec: str | Path | None,
                 registry: str | Path | ModelRegistry | None = None) -> tuple[Path, RegisteredModel | None]:
    """The file a model spec means, and its registry entry when it came from the registry.

    Rule: ``None`` is the demo model; an existing file is that file (so a file is never shadowed by a
    registry entry); otherwise ``name@selector`` is looked up in the registry, and so is a bare name
    that the registry knows. Anything else is a missing file, reported with what the registry holds.
    """
    if spec is None:
        if not DEMO_MODEL.is_file():
            raise ModelError(f"model file {DEMO_MODEL} does not exist; reinstall the package (the demo model ships "
                             "with it)")
        return DEMO_MODEL, None
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_file():
        return path, None
    store = registry if isinstance(registry, ModelRegistry) else ModelRegistry(registry)
    if looks_like_ref(text) and ("@" in text or store.versions(text)):
        try:
            entry = store.resolve(text)
        except RegistryError as err:
            raise ModelError(str(err)) from None
        return entry.path, entry
    names = store.names()
    known = f"models registered in {store.root}: {', '.join(names)}" if names else f"the registry {store.root} is empty"
    problem = "is a folder, not a model file" if path.is_dir() else "does not exist"
    raise ModelError(f"model file {path} {problem}; give the path of a .safetensors model (dsqnet train or "
                     f"dsqnet convert-opencd make one) or a registry reference name@VERSION / name@ALIAS ({known})")


def resolve_model(spec: str | Path | None, bands: tuple[str, ...] = ("red", "green", "blue"),
                  registry: str | Path | ModelRegistry | None = None) -> ModelRecord:
    """The model a user named (a file, a registry reference, or ``None`` for the demo model), checked
    to be usable with ``bands`` before any work starts (from its header where that is enough)."""
    path, entry = locate_model(spec, registry)
    try:
        summary = inspect_model_file(path)
    except CheckpointError as err:
        raise ModelError(f"{path} is not a usable DSQNet model: {err}") from None
    except Exception as err:  # a truncated or foreign file fails in many ways inside the loaders
        raise ModelError(f"{path} is not a usable DSQNet model ({type(err).__name__}: {err}); give a "
                         f".safetensors file written by dsqnet, or an authors' open-cd .pth checkpoint") from None
    band_order = tuple(summary.metadata.get("band_order", ("red", "green", "blue")))
    in_chans = getattr(summary.config.backbone, "in_chans", 3)
    if band_order != tuple(bands) or in_chans != len(bands):
        raise ModelError(
            f"{path} was trained on bands {list(band_order)} ({in_chans} channels) but the scenes provide "
            f"{list(bands)}; use a model trained on {', '.join(bands)} imagery or choose matching bands")
    sha256 = file_sha256(path)
    if entry is None:
        return ModelRecord(path=str(path.resolve()), name=summary.config.name,
                           version=str(summary.metadata.get("version", "unversioned")), sha256=sha256,
                           band_order=band_order, parameters=summary.parameters, architecture=summary.config.name)
    if sha256 != entry.sha256:
        raise ModelError(f"{path} ({entry.ref}) no longer matches the sha256 recorded when it was registered; the "
                         "registry copy was modified. Register the intended file again as a new version")
    return ModelRecord(path=str(path.resolve()), name=entry.name, version=str(entry.version), sha256=sha256,
                       band_order=band_order, parameters=summary.parameters, architecture=summary.config.name,
                       ref=entry.ref, requested=str(spec), registry=os.path.abspath(entry.path.parents[2]))
