"""The model registry: every model a run may use, versioned, with its metrics, lineage and aliases.

Why: a change map is only as trustworthy as our knowledge of the weights that made it. Runs name
models as ``name@version`` or ``name@alias`` instead of paths that get overwritten, retraining
registers a ``candidate`` and promotes it to ``production`` only when it is better, and every
output records the exact name, version and sha256 it used.

Layout of a registry folder (``--registry``, ``$DSQNET_REGISTRY``, else
``$XDG_DATA_HOME/dsqnet/registry`` or ``~/.local/share/dsqnet/registry``)::

    <root>/.lock                              the lock every writer holds (flows/files/locks.py)
    <root>/<name>/<version>/model.safetensors the weights, copied in at registration
    <root>/<name>/<version>/record.json       sha256, metrics, lineage, when and from where
    <root>/<name>/aliases.json                {"aliases": {"production": 3, ...}, "history": [...]}
    <root>/<name>/versions.json               the last version number handed out

References: ``name@3`` is version 3; ``name@production`` (any alias) is the version the alias points
at; ``name@latest`` is the highest version; a bare ``name`` is its ``production`` alias if set, else
its latest version.

Concurrency: every read-modify-write (a new version number, an alias change, new metrics) happens
under an exclusive lock on ``<root>/.lock``, and every file is written aside and renamed into place.
A new version is assembled in a hidden ``.incoming-*`` folder (the slow copy happens outside the
lock) and renamed to its number only when complete, so a version folder is either whole or absent,
even when the writer is killed. Version numbers are never reused. Readers take no lock: what they
read is always a complete file. The lock needs a filesystem where ``flock`` works across the
processes that share the registry (local disks; NFSv4 and most cluster filesystems).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.util
import json
import os
import re
import shutil
import socket
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flows.files.jsonfiles import fsync_dir, json_safe, write_json_atomic
from flows.files.locks import LockBusy, exclusive
from flows.runtime.disk_full import DiskFull
from flows.runtime.user_errors import UserError

REGISTRY_ENV = "DSQNET_REGISTRY"
DEFAULT_ALIAS = "production"
LATEST = "latest"
RECORD_FORMAT = "dsqnet-registry/1"
CHECKPOINT_FORMAT = "dsqnet-flows/1"  # dsqnet.weights.model_file.FORMAT, kept here so that the registry needs no torch
MODEL_FILE, RECORD_FILE, ALIASES_FILE, VERSIONS_FILE, LOCK_FILE = (
    "model.safetensors", "record.json", "aliases.json", "versions.json", ".lock")
STAGING_PREFIX = ".incoming-"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_REF_FORM = "name, name@VERSION or name@ALIAS"


class RegistryError(UserError, ValueError):
    """A registry request that cannot be served; the message names the registry and what exists there."""


def default_root() -> Path:
    """``$DSQNET_REGISTRY``, else ``$XDG_DATA_HOME/dsqnet/registry``, else ``~/.local/share/dsqnet/registry``."""
    if os.environ.get(REGISTRY_ENV):
        return Path(os.environ[REGISTRY_ENV]).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data_home).expanduser() / "dsqnet" / "registry"


def parse_ref(ref: str) -> tuple[str, str | None]:
    """``"name@selector"`` -> ``(name, selector)``; a bare name has selector ``None``."""
    name, at, selector = str(ref).strip().partition("@")
    if not _NAME.fullmatch(name) or (at and not _NAME.fullmatch(selector)):
        raise RegistryError(f"{ref!r} is not a model reference; write {_REF_FORM} (letters, digits, '.', '_', '-')")
    return name, selector if at else None


def looks_like_ref(text: str) -> bool:
    """Whether ``text`` has the form of a registry reference (it may still name a file)."""
    try:
        parse_ref(text)
    except RegistryError:
        return False
    return True


@dataclass(frozen=True)
class RegisteredModel:
    """One version of a registered model, as its record says, with the aliases pointing at it now."""

    name: str
    version: int
    path: Path
    sha256: str
    size: int
    registered: str
    source: str
    metrics: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    checkpoint: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()

    @property
    def ref(self) -> str:
        """The exact reference, ``name@version``: what outputs record."""
        return f"{self.name}@{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return json_safe({"ref": self.ref, "name": self.name, "version": self.version, "path": str(self.path),
                          "sha256": self.sha256, "size": self.size, "registered": self.registered,
                          "source": self.source, "aliases": list(self.aliases), "metrics": self.metrics,
                          "lineage": self.lineage, "checkpoint": self.checkpoint})


class ModelRegistry:
    """A registry folder; see the module docstring for its layout and guarantees.

    ``lock_timeout``: seconds a writer waits for another writer before giving up with an error.
    """

    def __init__(self, root: str | Path | None = None, lock_timeout: float = 120.0) -> None:
        self.root = Path(root).expanduser() if root else default_root()
        self.lock_timeout = lock_timeout

    def __repr__(self) -> str:
        return f"ModelRegistry({str(self.root)!r})"

    # ----------------------------------------------------------------------------------------------
    # Reading (no lock: every file is replaced whole)

    def names(self) -> list[str]:
        """The registered model names, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _NAME.fullmatch(p.name)
                      and self.versions(p.name))

    def versions(self, name: str) -> list[int]:
        """The versions of ``name``, ascending (empty if it is not registered)."""
        folder = self.root / name
        if not _NAME.fullmatch(name) or not folder.is_dir():
            return []
        return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and (p / RECORD_FILE).is_file())

    def aliases(self, name: str) -> dict[str, int]:
        """``{alias: version}`` for ``name``."""
        return dict(self._alias_state(name)["aliases"])

    def get(self, name: str, version: int) -> RegisteredModel:
        """Version ``version`` of ``name``; a ``RegistryError`` naming what exists if there is none."""
        _check_name(name, "model name")
        folder = self.root / name / str(int(version))
        record_path = folder / RECORD_FILE
        if not record_path.is_file():
            raise RegistryError(self._missing(name, f"{name}@{version}"))
        aliases = tuple(sorted(a for a, v in self.aliases(name).items() if v == int(version)))
        try:
            record = json.loads(record_path.read_text())
            return RegisteredModel(
                name=record["name"], version=int(record["version"]), path=folder / record.get("file", MODEL_FILE),
                sha256=record["sha256"], size=int(record.get("size", 0)), registered=record.get("registered", ""),
                source=record.get("source", ""), metrics=record.get("metrics") or {},
                lineage=record.get("lineage") or {}, checkpoint=record.get("checkpoint") or {}, aliases=aliases,
            )
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise RegistryError(f"the registry record {record_path} cannot be read ({type(err).__name__}: {err}); "
                                f"`dsqnet models verify --registry {self.root}` lists every problem") from None

    def resolve(self, ref: str) -> RegisteredModel:
        """``name@VERSION``, ``name@ALIAS``, ``name@latest``, or ``name`` (its ``production`` alias if set,
        else its latest version) -> the registered model."""
        name, selector = parse_ref(ref)
        versions = self.versions(name)
        if not versions:
            raise RegistryError(self._missing(name, ref))
        aliases = self.aliases(name)
        if selector is None:
            version = aliases.get(DEFAULT_ALIAS, versions[-1])
        elif selector.isdigit():
            version = int(selector)
        elif selector == LATEST:
            version = versions[-1]
        elif selector in aliases:
            version = aliases[selector]
        else:
            raise RegistryError(self._missing(name, ref))
        if version not in versions:
            raise RegistryError(self._missing(name, ref))
        return self.get(name, version)

    def history(self, name: str) -> list[dict[str, Any]]:
        """Every alias change of ``name``, oldest first: ``{alias, version, previous, at}``."""
        return list(self._alias_state(name)["history"])

    def verify(self) -> list[str]:
        """Problems found by re-reading everything (records, files, hashes, aliases); empty when consistent."""
        problems = []
        for name in self.names():
            versions = self.versions(name)
            for version in versions:
                try:
                    model = self.get(name, version)
                except RegistryError as err:
                    problems.append(str(err))
                    continue
                if (model.name, model.version) != (name, version):
                    problems.append(f"{model.path.parent}: the record says {model.ref}")
                if not model.path.is_file():
                    problems.append(f"{model.ref}: {model.path} is missing")
                elif file_sha256(model.path) != model.sha256:
                    problems.append(f"{model.ref}: {model.path} does not match its recorded sha256")
            try:
                aliases = self.aliases(name)
            except RegistryError as err:
                problems.append(str(err))
                continue
            problems += [f"{name}@{alias} points at version {v}, which does not exist"
                         for alias, v in aliases.items() if v not in versions]
        return problems

    # ----------------------------------------------------------------------------------------------
    # Writing (under the lock)

    def register(self, model_file: str | Path, name: str | None = None, metrics: Mapping[str, Any] | None = None,
                 lineage: Mapping[str, Any] | None = None, aliases: Sequence[str] = ()) -> RegisteredModel:
        """Copy ``model_file`` (a DSQNet ``.safetensors`` checkpoint) in as the next version of ``name``.

        ``name`` defaults to the checkpoint's architecture. ``lineage`` (training data, base model,
        config, code version) is merged over what the checkpoint itself records; ``aliases`` are
        pointed at the new version in the same locked step.
        """
        source = Path(model_file).expanduser()
        checkpoint, derived = _inspect_checkpoint(source)
        name = name or checkpoint["architecture"]
        _check_name(name, "model name")
        for alias in aliases:
            _check_alias(alias)
        folder = self.root / name
        staging = folder / f"{STAGING_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-{socket.gethostname()}"
        try:
            staging.mkdir(parents=True)
        except OSError as err:
            raise RegistryError(f"cannot write to the registry at {self.root} ({err.strerror or err}); "
                                f"choose a writable folder with --registry or {REGISTRY_ENV}") from None
        full = DiskFull(self.root, source.stat().st_size, fix=f"free some space or choose another registry "
                                                             f"(--registry or {REGISTRY_ENV}); the registry is unchanged")
        try:
            with full.said():
                sha256, size = _copy_and_hash(source, staging / MODEL_FILE)  # the slow part, outside the lock
            with self._locked():
                self._remove_abandoned(folder)
                version = max([self._last_version(name), *self.versions(name), 0]) + 1
                now = _now()
                write_json_atomic(staging / RECORD_FILE, {
                    "format": RECORD_FORMAT, "name": name, "version": version, "file": MODEL_FILE,
                    "sha256": sha256, "size": size, "registered": now, "source": str(source.resolve()),
                    "metrics": dict(metrics or {}), "lineage": {**derived, **dict(lineage or {})},
                    "checkpoint": checkpoint,
                })
                os.rename(staging, folder / str(version))  # the version appears whole, or not at all
                fsync_dir(folder)
                write_json_atomic(folder / VERSIONS_FILE, {"last_version": version})
                if aliases:
                    self._set_aliases(name, {alias: version for alias in aliases}, now)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return self.get(name, version)

    def promote(self, name: str, version: int, alias: str = DEFAULT_ALIAS) -> RegisteredModel:
        """Point ``name@alias`` at ``version`` (``production`` by default); the change is kept in the history."""
        _check_name(name, "model name")
        _check_alias(alias)
        with self._locked():
            if int(version) not in self.versions(name):
                raise RegistryError(self._missing(name, f"{name}@{version}"))
            self._set_aliases(name, {alias: int(version)}, _now())
        return self.get(name, version)

    def remove_alias(self, name: str, alias: str) -> None:
        """Drop ``name@alias`` (a bare ``name`` then means its latest version if the alias was ``production``)."""
        _check_name(name, "model name")
        with self._locked():
            state = self._alias_state(name)
            if alias not in state["aliases"]:
                raise RegistryError(self._missing(name, f"{name}@{alias}"))
            self._set_aliases(name, {alias: None}, _now())

    def set_metrics(self, name: str, version: int, metrics: Mapping[str, Any], replace: bool = False) -> RegisteredModel:
        """Add ``metrics`` to a version's record (top-level keys replaced, e.g. one key per holdout set),
        or ``replace`` them all. Weights never change after registration; metrics may grow."""
        _check_name(name, "model name")
        with self._locked():
            record_path = self.root / name / str(int(version)) / RECORD_FILE
            if not record_path.is_file():
                raise RegistryError(self._missing(name, f"{name}@{version}"))
            record = json.loads(record_path.read_text())
            record["metrics"] = dict(metrics) if replace else {**(record.get("metrics") or {}), **dict(metrics)}
            write_json_atomic(record_path, record)
        return self.get(name, version)

    def list(self, name: str | None = None) -> list[RegisteredModel]:
        """Every registered version (of ``name``, or of all models), by name then version."""
        names = [name] if name else self.names()
        return [self.get(n, v) for n in names for v in self.versions(n)]

    # ----------------------------------------------------------------------------------------------
    # Internals

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """The registry's exclusive lock; released by the kernel even if this process is killed."""
        with ExitStack() as held:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                held.enter_context(exclusive(self.root / LOCK_FILE, wait=self.lock_timeout))
            except LockBusy as busy:
                raise RegistryError(
                    f"{busy.held_by('another process')} has held the registry lock {self.root / LOCK_FILE} for "
                    f"more than {self.lock_timeout:.0f} s; wait for it to finish or check for a stuck dsqnet process"
                ) from None
            except OSError as err:
                raise RegistryError(f"cannot write to the registry at {self.root} ({err.strerror or err}); "
                                    f"choose a writable folder with --registry or {REGISTRY_ENV}") from None
            yield

    def _alias_state(self, name: str) -> dict[str, Any]:
        path = self.root / name / ALIASES_FILE
        if not path.is_file():
            return {"aliases": {}, "history": []}
        try:
            state = json.loads(path.read_text())
            return {"aliases": {str(k): int(v) for k, v in state.get("aliases", {}).items()},
                    "history": list(state.get("history", []))}
        except (OSError, ValueError, AttributeError, TypeError) as err:  # not JSON, or not the layout's
            raise RegistryError(
                f"the alias file {path} cannot be read ({type(err).__name__}: {err}); restore it from a backup, or "
                f"remove it: the versions of {name} stay, without aliases, and `dsqnet models promote {name}@VERSION "
                f"--alias ALIAS --registry {self.root}` sets each again") from None

    def _set_aliases(self, name: str, changes: dict[str, int | None], when: str) -> None:
        """Apply ``{alias: version or None}``; call with the lock held."""
        state = self._alias_state(name)
        for alias, version in changes.items():
            previous = state["aliases"].get(alias)
            if version is None:
                state["aliases"].pop(alias, None)
            else:
                state["aliases"][alias] = version
            state["history"].append({"alias": alias, "version": version, "previous": previous, "at": when})
        write_json_atomic(self.root / name / ALIASES_FILE, state)

    def _last_version(self, name: str) -> int:
        path = self.root / name / VERSIONS_FILE
        try:
            return int(json.loads(path.read_text())["last_version"])
        except FileNotFoundError:
            return 0
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise RegistryError(f"{path} cannot be read ({err}); it only guards against reusing version numbers: "
                                "remove it and the versions present are counted instead") from None

    @staticmethod
    def _remove_abandoned(folder: Path) -> None:
        """Leftovers of writers that were killed; call with the lock held.

        Temporary JSON files beside aliases, versions and records are only written under the lock,
        so with the lock held every one of them is abandoned. Half-copied versions are copied outside
        the lock, so only those of processes on this host that are gone are removed."""
        for tmp in [*folder.glob(".*.tmp"), *folder.glob("[0-9]*/.*.tmp")]:
            tmp.unlink(missing_ok=True)
        host = socket.gethostname()
        for staging in folder.glob(f"{STAGING_PREFIX}*"):
            pid, _, rest = staging.name[len(STAGING_PREFIX):].partition("-")
            if rest.partition("-")[2] == host and pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(staging, ignore_errors=True)

    def _missing(self, name: str, ref: str) -> str:
        versions = self.versions(name)
        if not versions:
            names = self.names()
            known = f"registered: {', '.join(names)}" if names else "the registry is empty"
            return (f"no model named {name!r} in the registry at {self.root} ({known}). Register one with "
                    f"`dsqnet models register FILE --name {name}`, or point --registry (or {REGISTRY_ENV}) "
                    "at the registry that holds it")
        aliases = self.aliases(name)
        alias_text = ", ".join(f"{a} -> {v}" for a, v in sorted(aliases.items())) or "none"
        return (f"{ref!r} is not in the registry at {self.root}: {name} has versions "
                f"{', '.join(map(str, versions))} and aliases {alias_text}; write {_REF_FORM}")


# --------------------------------------------------------------------------------------------------
# Helpers


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _copy_and_hash(source: Path, target: Path) -> tuple[str, int]:
    """Copy ``source`` to ``target``, hashing the bytes written, and flush them to disk."""
    digest, size = hashlib.sha256(), 0
    with open(source, "rb") as src, open(target, "wb") as dst:
        for chunk in iter(lambda: src.read(1 << 20), b""):
            digest.update(chunk)
            dst.write(chunk)
            size += len(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    return digest.hexdigest(), size


def read_checkpoint_metadata(path: Path) -> dict[str, Any]:
    """The JSON metadata of a DSQNet checkpoint, read from the safetensors header without torch (so the
    registry and its command line stay light); a ``RegistryError`` for any other file."""
    from safetensors import SafetensorError, safe_open

    hint = ("The registry holds DSQNet .safetensors checkpoints; convert an authors' .pth first with "
            "`dsqnet convert-opencd`")
    try:
        with safe_open(str(path), framework="numpy") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise RegistryError(f"{path} cannot be registered: it is not a safetensors file ({err}). {hint}") from None
    if header.get("format") != CHECKPOINT_FORMAT:
        raise RegistryError(f"{path} cannot be registered: it is a safetensors file but not a DSQNet checkpoint "
                            f"(format {header.get('format')!r}, expected {CHECKPOINT_FORMAT!r}). {hint}")
    try:
        return {k: json.loads(v) for k, v in header.items() if k != "format"}
    except ValueError as err:
        raise RegistryError(f"{path} cannot be registered: its metadata is not JSON ({err})") from None


def _inspect_checkpoint(source: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(what the checkpoint is, the lineage it records itself); refuses files that are not our checkpoints."""
    from flows.runtime.versions import code_version

    if not source.is_file():
        raise RegistryError(f"model file {source} does not exist; give the .safetensors file to register")
    meta = read_checkpoint_metadata(source)
    config = meta.get("config") or {}
    training = meta.get("training") or {}
    train_config = training.get("config") or {}
    checkpoint = {"architecture": config.get("name", "dsqnet"), "band_order": meta.get("band_order"),
                  "metrics": meta.get("metrics")}
    lineage: dict[str, Any] = {}
    if training.get("data") or train_config.get("data"):
        lineage["training_data"] = training.get("data") or train_config.get("data")
    if (train_config.get("model") or {}).get("init_from"):
        lineage["base_model"] = train_config["model"]["init_from"]
    if train_config:
        lineage["config"] = train_config
    if "step" in training:
        lineage["training_steps"] = training["step"]
    dsqnet_code = importlib.util.find_spec("dsqnet").submodule_search_locations[0]  # its path, without torch
    lineage["code_version"] = code_version(Path(dsqnet_code))
    return checkpoint, lineage


def _check_name(name: str, what: str) -> None:
    if not _NAME.fullmatch(name or ""):
        raise RegistryError(f"{what} {name!r} is not allowed; use letters, digits, '.', '_' and '-' "
                            "(starting with a letter or digit)")


def _check_alias(alias: str) -> None:
    _check_name(alias, "alias")
    if alias.isdigit() or alias == LATEST:
        raise RegistryError(f"alias {alias!r} would read as a version; choose a word such as production or candidate")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
