"""The model registry on real folders: versions, aliases, references, the CLI, and concurrent writers
in real processes (including one killed mid-write)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from flows.cli.main import main
from flows.detect import check_model
from flows.models.resolve import ModelError, resolve_model
from flows.params.detect import parse_request
from flows.models.registry import (
    ALIASES_FILE,
    RECORD_FILE,
    STAGING_PREFIX,
    ModelRegistry,
    RegistryError,
    default_root,
    file_sha256,
)
from tests.flows.flow_helpers import tiny_model_file

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two different tiny model files (different weights, so different hashes)."""
    folder = tmp_path_factory.mktemp("models")
    return tiny_model_file(folder / "a.safetensors", seed=0), tiny_model_file(folder / "b.safetensors", seed=1)


def test_register_resolve_promote_round_trip(tmp_path, models):
    a, b = models
    registry = ModelRegistry(tmp_path / "reg")
    first = registry.register(a, name="levir", metrics={"f1": 0.8}, lineage={"training_data": "/data/levir"})
    second = registry.register(b, name="levir", aliases=["candidate"])
    assert (first.ref, second.ref) == ("levir@1", "levir@2")
    assert first.path == tmp_path / "reg" / "levir" / "1" / "model.safetensors" and first.path.is_file()
    assert first.sha256 == file_sha256(a) != second.sha256 == file_sha256(b)
    assert first.source == str(a.resolve()) and first.metrics == {"f1": 0.8}
    assert first.lineage["training_data"] == "/data/levir" and first.lineage["code_version"]
    assert first.checkpoint["architecture"] == "dsqnet_swin_mini"

    assert registry.resolve("levir").version == 2  # no production alias yet: the latest version
    registry.promote("levir", 1)
    assert registry.resolve("levir").version == 1  # now its production alias
    assert registry.resolve("levir@production").version == 1
    assert registry.resolve("levir@candidate").version == 2
    assert registry.resolve("levir@latest").version == 2
    assert registry.resolve("levir@2").sha256 == file_sha256(b)
    assert registry.aliases("levir") == {"production": 1, "candidate": 2}
    assert registry.resolve("levir@1").aliases == ("production",)

    registry.promote("levir", 2)  # a better candidate becomes production
    assert registry.resolve("levir").version == 2
    assert [(h["alias"], h["version"], h["previous"]) for h in registry.history("levir")] == [
        ("candidate", 2, None), ("production", 1, None), ("production", 2, 1)]
    registry.remove_alias("levir", "candidate")
    assert registry.aliases("levir") == {"production": 2}

    updated = registry.set_metrics("levir", 1, {"holdout": {"f1": 0.7}})
    assert updated.metrics == {"f1": 0.8, "holdout": {"f1": 0.7}}
    assert [m.ref for m in registry.list()] == ["levir@1", "levir@2"] and registry.names() == ["levir"]
    a_copy = registry.resolve("levir@1").path
    a.touch()  # the source may change later; the registry keeps its own copy
    assert file_sha256(a_copy) == first.sha256
    assert registry.verify() == []


def test_references_that_are_not_registered_name_what_is(tmp_path, models):
    registry = ModelRegistry(tmp_path / "reg")
    with pytest.raises(RegistryError, match="the registry is empty"):
        registry.resolve("levir@1")
    registry.register(models[0], name="levir", aliases=["production"])
    registry.register(models[0], name="levir")
    with pytest.raises(RegistryError) as err:
        registry.resolve("levir@7")
    message = str(err.value)
    assert "versions 1, 2" in message and "production -> 1" in message and str(registry.root) in message
    with pytest.raises(RegistryError, match="levir has versions 1, 2"):
        registry.resolve("levir@staging")
    with pytest.raises(RegistryError, match=r"no model named 'other'.*registered: levir"):
        registry.resolve("other@production")
    with pytest.raises(RegistryError, match="is not a model reference"):
        registry.resolve("levir@")
    with pytest.raises(RegistryError, match="would read as a version"):
        registry.promote("levir", 1, alias="3")
    with pytest.raises(RegistryError, match="versions 1, 2"):
        registry.promote("levir", 9)


def test_only_dsqnet_checkpoints_are_registered(tmp_path):
    registry = ModelRegistry(tmp_path / "reg")
    foreign = tmp_path / "weights.pth"
    foreign.write_bytes(b"\x80\x04not a safetensors file")
    with pytest.raises(RegistryError, match="convert-opencd"):
        registry.register(foreign, name="levir")
    with pytest.raises(RegistryError, match="does not exist"):
        registry.register(tmp_path / "missing.safetensors", name="levir")
    other = tmp_path / "other.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, str(other))  # safetensors, but not a DSQNet checkpoint
    with pytest.raises(RegistryError, match="not a DSQNet checkpoint"):
        registry.register(other, name="levir")
    assert registry.names() == [] and not (tmp_path / "reg").exists()  # refused before anything was written


def test_the_registry_reads_the_checkpoint_format_dsqnet_writes():
    from dsqnet.weights.model_file import FORMAT
    from flows.models.registry import CHECKPOINT_FORMAT

    assert CHECKPOINT_FORMAT == FORMAT


def test_names_and_aliases_are_checked(tmp_path, models):
    registry = ModelRegistry(tmp_path / "reg")
    with pytest.raises(RegistryError, match="not allowed"):
        registry.register(models[0], name="bad/name")
    with pytest.raises(RegistryError, match="would read as a version"):
        registry.register(models[0], name="levir", aliases=["latest"])
    assert registry.names() == []


def test_the_registry_folder_comes_from_the_option_the_environment_or_the_user_data_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("DSQNET_REGISTRY", str(tmp_path / "env-reg"))
    assert default_root() == tmp_path / "env-reg" and ModelRegistry().root == tmp_path / "env-reg"
    assert ModelRegistry(tmp_path / "given").root == tmp_path / "given"
    monkeypatch.delenv("DSQNET_REGISTRY")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_root() == tmp_path / "xdg" / "dsqnet" / "registry"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_root() == Path.home() / ".local" / "share" / "dsqnet" / "registry"


def test_runs_resolve_registry_references_and_record_name_version_and_hash(tmp_path, models, monkeypatch):
    a, b = models
    root = tmp_path / "reg"
    registry = ModelRegistry(root)
    registry.register(a, name="levir")
    registry.register(b, name="levir")
    registry.promote("levir", 1)

    # detect-changes checks its model in its check-model task, with the request's registry
    request = parse_request(model="levir@production", registry=str(root))
    record = check_model.fn(request.model, request.registry)
    assert (record.name, record.version, record.ref, record.requested) == ("levir", "1", "levir@1", "levir@production")
    assert record.sha256 == file_sha256(a) and record.path == str(root / "levir" / "1" / "model.safetensors")
    assert record.registry == str(root) and record.architecture == "dsqnet_swin_mini"
    assert resolve_model("levir", registry=registry).version == "1"  # a bare registered name: production
    monkeypatch.setenv("DSQNET_REGISTRY", str(root))
    assert resolve_model("levir@2").sha256 == file_sha256(b)  # the registry from the environment

    plain = resolve_model(str(a))  # a plain file keeps today's record
    assert plain.name == "dsqnet_swin_mini" and plain.ref is None and plain.registry is None

    with pytest.raises(ModelError, match=r"'levir@9' is not in the registry .*versions 1, 2.*production -> 1"):
        resolve_model("levir@9", registry=root)
    with pytest.raises(ModelError, match=r"missing\.safetensors does not exist.*registered in .*: levir"):
        resolve_model(str(tmp_path / "missing.safetensors"), registry=root)

    copy = root / "levir" / "2" / "model.safetensors"
    os.chmod(copy, 0o644)
    with open(copy, "r+b") as f:  # someone edits the registry's copy in place
        f.seek(-4, os.SEEK_END)
        f.write(b"\0\0\0\1")
    with pytest.raises(ModelError, match="no longer matches the sha256"):
        resolve_model("levir@2", registry=root)
    assert registry.verify() == [f"levir@2: {copy} does not match its recorded sha256"]


def test_models_command_line(tmp_path, models, capsys):
    reg = ["--registry", str(tmp_path / "reg")]
    assert main(["models", "list", *reg]) == 0
    assert "no models" in capsys.readouterr().out
    report = tmp_path / "holdout-eval" / "evaluation.json"
    report.parent.mkdir()
    report.write_text(json.dumps({"model": {}, "created": "2024-01-01T00:00:00+00:00", "flow_run_id": None,
                                  "data": {"root": "/data/holdout"},
                                  "pixel": {"precision": 0.9, "recall": 0.8, "f1": 0.85, "iou": 0.74, "kappa": 0.8},
                                  "objects": {"f1": 0.7, "matched": 7}}))
    assert main(["models", "register", str(models[0]), "--name", "levir", "--alias", "candidate", "--metrics",
                 str(report), "--lineage", "base_model=levir@0", *reg]) == 0
    assert "registered levir@1 (candidate)" in capsys.readouterr().out
    assert main(["models", "register", str(models[1]), *reg]) == 0  # named after its architecture
    assert "registered dsqnet_swin_mini@1" in capsys.readouterr().out
    assert main(["models", "promote", "levir@candidate", *reg]) == 0
    assert "levir@production -> version 1" in capsys.readouterr().out
    assert main(["models", "list", *reg]) == 0
    table = capsys.readouterr().out
    assert "levir" in table and "candidate,production" in table and "dsqnet_swin_mini" in table
    assert main(["models", "show", "levir", *reg]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["ref"] == "levir@1" and shown["lineage"]["base_model"] == "levir@0"
    assert shown["metrics"]["holdout-eval"]["pixel"]["f1"] == 0.85 and shown["metrics"]["holdout-eval"]["objects"]
    assert [h["alias"] for h in shown["alias_history"]] == ["candidate", "production"]
    assert main(["models", "verify", *reg]) == 0
    assert "consistent" in capsys.readouterr().out

    assert main(["models", "promote", "levir", *reg]) == 1
    assert "levir@VERSION or levir@ALIAS" in capsys.readouterr().err
    assert main(["models", "show", "levir@5", *reg]) == 1
    assert "versions 1" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ['{"aliases": {"production": 1', '["production"]', '{"aliases": {"production": "one"}}'])
def test_a_damaged_alias_file_is_named_with_the_way_back(tmp_path, models, capsys, damage):
    """Before, garbled JSON named no fix, and JSON of another shape ended in a traceback."""
    registry = ModelRegistry(tmp_path / "reg")
    registry.register(models[0], name="levir", aliases=["production"])
    aliases = tmp_path / "reg" / "levir" / ALIASES_FILE
    aliases.write_text(damage)
    reg = ["--registry", str(tmp_path / "reg")]
    assert main(["models", "show", "levir@1", *reg]) == 1
    said = capsys.readouterr().err.strip()
    assert said.startswith(f"dsqnet models: error: the alias file {aliases} cannot be read (") and "\n" not in said
    assert said.endswith(f"remove it: the versions of levir stay, without aliases, and `dsqnet models promote "
                         f"levir@VERSION --alias ALIAS --registry {tmp_path / 'reg'}` sets each again")
    assert aliases.read_text() == damage  # left as it was, for the user to restore
    aliases.unlink()  # the way back the message gives
    assert main(["models", "promote", "levir@1", *reg]) == 0
    assert registry.resolve("levir").version == 1 and registry.aliases("levir") == {"production": 1}


def _writer(root: Path, model: Path, writer: str, count: int, go: Path | None = None) -> subprocess.Popen:
    args = [sys.executable, "-m", "tests.flows.registry_writer", str(root), str(model), writer, str(count)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([*args, *([str(go)] if go else [])], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def check_consistent(root: Path) -> dict[int, dict]:
    """Every version folder whole (record + model with the recorded hash), aliases pointing at versions,
    no half-written file at a final path; returns the records by version."""
    folder = root / "shared"
    versions = sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())
    records = {}
    for version in versions:
        record = json.loads((folder / str(version) / RECORD_FILE).read_text())
        assert record["version"] == version and record["name"] == "shared"
        assert file_sha256(folder / str(version) / "model.safetensors") == record["sha256"]
        records[version] = record
    aliases = json.loads((folder / ALIASES_FILE).read_text())["aliases"] if (folder / ALIASES_FILE).exists() else {}
    assert set(aliases.values()) <= set(versions)
    assert ModelRegistry(root).verify() == []
    return records


def test_two_concurrent_writers_never_corrupt_the_registry(tmp_path, models):
    root, go, count = tmp_path / "reg", tmp_path / "go", 8
    writers = [_writer(root, model, name, count, go) for name, model in zip("ab", models)]
    time.sleep(0.5)
    go.touch()
    outputs = [w.communicate(timeout=120) for w in writers]
    assert [w.returncode for w in writers] == [0, 0], [err[-2000:] for _, err in outputs]

    records = check_consistent(root)
    assert sorted(records) == list(range(1, 2 * count + 1))  # every version exactly once, none skipped
    made = sorted((r["lineage"]["writer"], r["lineage"]["i"]) for r in records.values())
    assert made == sorted((w, i) for w in "ab" for i in range(count))
    for record in records.values():
        writer = record["lineage"]["writer"]
        assert record["sha256"] == file_sha256(models["ab".index(writer)])
        assert record["metrics"] == {f"by-{writer}": record["lineage"]["i"]}  # no metrics lost or crossed
    printed = {w: [int(line) for line in out.split()] for w, (out, _) in zip("ab", outputs)}
    registry = ModelRegistry(root)
    aliases = registry.aliases("shared")
    assert aliases["writer-a"] == printed["a"][-1] and aliases["writer-b"] == printed["b"][-1]
    assert aliases["production"] in (printed["a"][-1], printed["b"][-1])
    assert len(registry.history("shared")) == 2 * 2 * count  # no alias change lost
    assert not list((root / "shared").glob(f"{STAGING_PREFIX}*")) and not list((root / "shared").rglob("*.tmp"))


def test_a_killed_writer_leaves_no_partial_version_and_no_reused_number(tmp_path, models):
    root = tmp_path / "reg"
    rng = random.Random(0)
    highest = 0
    for _ in range(3):
        writer = _writer(root, models[0], "k", -1)
        first = writer.stdout.readline()  # registering in a loop from here on
        assert first.strip().isdigit(), writer.stderr.read()[-2000:]
        time.sleep(rng.uniform(0.0, 0.4))
        os.killpg(writer.pid, signal.SIGKILL)
        writer.wait(timeout=30)
        writer.stdout.close()
        writer.stderr.close()
        records = check_consistent(root)
        assert min(records) == 1 and sorted(records) == list(range(1, max(records) + 1))
        assert max(records) > highest
        highest = max(records)
    # the lock died with the writer; the next registration gets a new number and clears its leftovers
    after = ModelRegistry(root).register(models[1], name="shared")
    assert after.version > highest
    assert not list((root / "shared").glob(f"{STAGING_PREFIX}*")) and not list((root / "shared").rglob("*.tmp"))
    check_consistent(root)
