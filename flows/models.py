"""Which model a run uses, checked before any worker starts: the file exists, is a model, fits the bands.

Every output records the model's name, version and the hash of its file, so a change map can always
be traced to the exact weights that made it.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

from dsqnet.checkpoints import CheckpointError, load_model_file

DEMO_MODEL = Path(__file__).resolve().parent / "assets" / "dsqnet_demo.safetensors"


class ModelError(ValueError):
    """A model file that cannot be used for this run; the message says why and what to do."""


@dataclass(frozen=True)
class ModelRecord:
    path: str
    name: str
    version: str
    sha256: str
    band_order: tuple[str, ...]
    parameters: int

    def to_dict(self) -> dict:
        return asdict(self)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_model(spec: str | Path | None, bands: tuple[str, ...] = ("red", "green", "blue")) -> ModelRecord:
    """The model a user named (a ``.safetensors`` or authors' ``.pth`` file), or the demo model for ``None``."""
    path = Path(spec).expanduser() if spec else DEMO_MODEL
    if not path.is_file():
        hint = ("reinstall the package (the demo model ships with it)" if spec is None
                else "give the path of a .safetensors model (dsqnet train or dsqnet convert-opencd make one)")
        raise ModelError(f"model file {path} does not exist; {hint}")
    try:
        model = load_model_file(path)
    except CheckpointError as err:
        raise ModelError(f"{path} is not a usable DSQNet model: {err}") from None
    except Exception as err:  # a truncated or foreign file fails in many ways inside the loaders
        raise ModelError(f"{path} is not a usable DSQNet model ({type(err).__name__}: {err}); give a "
                         f".safetensors file written by dsqnet, or an authors' open-cd .pth checkpoint") from None
    metadata = getattr(model, "metadata", {}) or {}
    band_order = tuple(metadata.get("band_order", ("red", "green", "blue")))
    in_chans = getattr(model.config.backbone, "in_chans", 3)
    if band_order != tuple(bands) or in_chans != len(bands):
        raise ModelError(
            f"{path} was trained on bands {list(band_order)} ({in_chans} channels) but the scenes provide "
            f"{list(bands)}; use a model trained on {', '.join(bands)} imagery or choose matching bands")
    return ModelRecord(
        path=str(path.resolve()), name=model.config.name, version=str(metadata.get("version", "unversioned")),
        sha256=file_sha256(path), band_order=band_order, parameters=sum(p.numel() for p in model.parameters()),
    )
