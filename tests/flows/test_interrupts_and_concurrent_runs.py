"""Ctrl-C and SIGTERM stop a real ``dsqnet detect`` cleanly and the rerun resumes; two runs of the same
work never write at once, two different runs into one ``--out`` both succeed.

Every run here is a real ``dsqnet detect`` subprocess with the same environment, so the numbers of
each agree bit for bit with the others'.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import pandas as pd
import psutil
import pytest

from flows.files.locks import read_owner
from tests.flows.flow_helpers import FAST, cli_env, hole_catalog, tiny_model_file

DSQNET = str(Path(sys.executable).parent / "dsqnet")
BLOCKS = 4
OUTPUTS = ("change.tif", "change_prob.tif", "preview.png")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("interrupts")
    catalog, region = hole_catalog(folder / "scenes")
    return folder, catalog, region, tiny_model_file(folder / "tiny.safetensors")


def detect_args(inputs, out: Path, name: str = "spot", workers: int = 1) -> list[str]:
    _, catalog, region, model = inputs
    params = {"region": region, "before": "2021-06-10", "after": "2023-06-12", "catalog": catalog, "model": model,
              "out": out, "run-name": name, "block-size": 512, "workers": workers, **FAST}
    return ["detect", *[arg for k, v in params.items() for arg in (f"--{k.replace('_', '-')}", str(v))]]


def start(args: list[str], env: dict, logs: Path) -> subprocess.Popen:
    """A ``dsqnet`` subprocess in a session of its own (its process group is what a terminal's Ctrl-C hits),
    writing to files (a pipe left unread could block it)."""
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "stdout", "wb") as out, open(logs / "stderr", "wb") as err:
        return subprocess.Popen([DSQNET, *args], env=env, stdout=out, stderr=err, start_new_session=True)


def finished(run: subprocess.Popen, logs: Path, timeout: float = 600) -> tuple[int, str, str]:
    rc = run.wait(timeout=timeout)
    return rc, (logs / "stdout").read_text(), (logs / "stderr").read_text()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_same_outputs(folder: Path, reference: Path) -> None:
    """The rasters and the preview byte for byte; the polygons row for row (their run_id names each run)."""
    for name in OUTPUTS:
        assert sha256(folder / name) == sha256(reference / name), name
    polygons, expected = (gpd.read_parquet(f / "changes.parquet").drop(columns="run_id") for f in (folder, reference))
    pd.testing.assert_frame_equal(polygons, expected, check_exact=True)


@pytest.fixture(scope="module")
def reference(prefect_api, inputs, tmp_path_factory) -> Path:
    """The run folder of an uninterrupted run."""
    out = tmp_path_factory.mktemp("reference")
    rc, stdout, stderr = finished(start(detect_args(inputs, out), cli_env(prefect_api), out / "logs"), out / "logs")
    assert rc == 0, stderr[-3000:]
    return out / "spot"


def wait_for(condition, what: str, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the run ended (rc {process.returncode}) before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {timeout:.0f} s")
        time.sleep(0.05)


def inferred(out: Path, name: str = "spot") -> int:
    return len(list((out / ".cache" / name / "change_prob_window_sums").glob("block-*.npy")))


def alive(processes: list[psutil.Process]) -> list[str]:
    left = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{process.pid} {' '.join(process.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            pass
    return left


def interrupt(inputs, out: Path, env: dict, signum: int, to_group: bool) -> tuple[int, str, str, int]:
    """Run detect on two Dask worker processes with Prefect's temporary API server, signal it once a block
    is done, and check that it ends at once with nothing left running; returns rc, stdout, stderr and the
    blocks done."""
    env = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}  # this run starts its own temporary API
    env["PREFECT_HOME"] = str(out / "prefect-home")
    logs = out / "logs"
    run = start(detect_args(inputs, out, workers=2), env, logs)
    try:
        wait_for(lambda: inferred(out) >= 1, "block inferred", run)
        children = psutil.Process(run.pid).children(recursive=True)
        commands = [" ".join(c.cmdline()) for c in children]
        assert any("uvicorn" in c for c in commands), commands  # Prefect's temporary API server
        assert sum("spawn_main" in c for c in commands) >= 2, commands  # the Dask workers
        if to_group:
            os.killpg(run.pid, signum)  # what Ctrl-C in a terminal does: the whole foreground group
        else:
            os.kill(run.pid, signum)  # what `kill` and a Prefect worker cancelling a run do
        rc = run.wait(timeout=5)  # the promise: stopped within 5 s
        gone, left = psutil.wait_procs(children, timeout=2)  # reaped by init once their parent is gone
        assert not alive(left), alive(left)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    done = inferred(out)
    assert 1 <= done < BLOCKS, "the run must be stopped with some, not all, blocks inferred"
    assert not (out / "spot").exists()  # nothing published
    return rc, (logs / "stdout").read_text(), (logs / "stderr").read_text(), done


def test_ctrl_c_stops_the_run_at_once_with_one_line_and_the_rerun_resumes_bit_for_bit(
        prefect_api, inputs, reference, tmp_path):
    out = tmp_path / "runs"
    rc, stdout, stderr, done = interrupt(inputs, out, cli_env(prefect_api), signal.SIGINT, to_group=True)
    assert rc == 130
    plural = "s" if done != 1 else ""
    assert stderr.splitlines()[-1] == \
        f"dsqnet detect: interrupted; rerun the same command to resume from {done} done block{plural}"
    assert "Traceback" not in stdout + stderr and "Error" not in stdout + stderr, stderr[-3000:]

    rerun = start(detect_args(inputs, out, workers=2), cli_env(prefect_api), tmp_path / "rerun")
    rc, _, stderr = finished(rerun, tmp_path / "rerun")
    assert rc == 0, stderr[-3000:]
    manifest = json.loads((out / "spot" / "run.json").read_text())
    assert (manifest["blocks"]["reused"], manifest["blocks"]["computed"]) == (done, BLOCKS - done)
    assert_same_outputs(out / "spot", reference)


def test_sigterm_to_the_run_alone_stops_it_and_its_workers_and_server(prefect_api, inputs, tmp_path):
    out = tmp_path / "runs"
    rc, stdout, stderr, done = interrupt(inputs, out, cli_env(prefect_api), signal.SIGTERM, to_group=False)
    assert rc == 143
    plural = "s" if done != 1 else ""
    assert stderr.splitlines()[-1] == \
        f"dsqnet detect: stopped by SIGTERM; rerun the same command to resume from {done} done block{plural}"
    assert "Traceback" not in stdout + stderr, stderr[-3000:]


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_second_run_of_the_same_work_is_refused_naming_the_first_and_another_run_goes_ahead(
        prefect_api, inputs, reference, tmp_path):
    out, env = tmp_path / "runs", cli_env(prefect_api)
    lock = out / ".cache" / "spot.lock"
    first = start(detect_args(inputs, out), env, tmp_path / "first")
    try:
        wait_for(lambda: (owner := read_owner(lock, patience=0)) is not None and owner.pid == first.pid,
                 "lock taken by the first run", first)
        os.killpg(first.pid, signal.SIGSTOP)  # the first run holds the work, for as long as the others take
        cache = digest(out / ".cache" / "spot")
        second = start(detect_args(inputs, out), env, tmp_path / "second")
        other = start(detect_args(inputs, out, name="other"), env, tmp_path / "other")
        rc, _, stderr = finished(second, tmp_path / "second")
        started = read_owner(lock).describe().rpartition("started ")[2]
        assert rc == 1, stderr[-3000:]
        assert stderr.splitlines()[-1] == (
            f"dsqnet detect: error: run folder {out / 'spot'} is being written by another dsqnet run "
            f"(pid {first.pid} on {socket.gethostname()}, started {started}); wait for it to finish or choose "
            "another --run-name (parameter 'run_name')")
        assert re.fullmatch(r"\d\d:\d\d UTC", started)
        assert digest(out / ".cache" / "spot") == cache  # the second run touched nothing of the first's
        rc, _, stderr = finished(other, tmp_path / "other")
        assert rc == 0, stderr[-3000:]
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    rc, _, stderr = finished(first, tmp_path / "first")
    assert rc == 0, stderr[-3000:]
    manifest = json.loads((out / "spot" / "run.json").read_text())
    assert (manifest["blocks"]["reused"], manifest["blocks"]["computed"]) == (0, BLOCKS)
    assert_same_outputs(out / "spot", reference)
    assert_same_outputs(out / "other", reference)
    assert not [p.name for p in out.iterdir() if ".partial-" in p.name]
