"""Ctrl-C and SIGTERM stop a real ``dsqnet detect`` cleanly and the rerun resumes; two runs of the same
work never write at once, two different runs into one ``--out`` both succeed.

The runs that are signalled, and those that run at once, are real ``dsqnet detect`` subprocesses
(cli_env: their numbers agree bit for bit with a run in this process).
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

from flows.cli.main import main
from flows.files.locks import read_owner
from tests.flows.flow_helpers import FAST, cli_env, hole_catalog, tiny_model_file
from tests.helpers import hears_ctrl_c

DSQNET = str(Path(sys.executable).parent / "dsqnet")
SLOW = {**FAST, "stride": 32}  # four times the windows: a block takes seconds, so a run is caught midway
BLOCKS = 4
OUTPUTS = ("change.tif", "change_prob.tif", "preview.png")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("interrupts")
    catalog, region = hole_catalog(folder / "scenes")
    return folder, catalog, region, tiny_model_file(folder / "tiny.safetensors")


def detect_args(inputs, out: Path, name: str = "spot", workers: int = 1, windows: dict = SLOW) -> list[str]:
    _, catalog, region, model = inputs
    params = {"region": region, "before": "2021-06-10", "after": "2023-06-12", "catalog": catalog, "model": model,
              "out": out, "run-name": name, "block-size": 512, "workers": workers, **windows}
    return ["detect", *[arg for k, v in params.items() for arg in (f"--{k.replace('_', '-')}", str(v))]]


def start(args: list[str], env: dict, logs: Path) -> subprocess.Popen:
    """A ``dsqnet`` subprocess in a session of its own (its process group is what a terminal's Ctrl-C hits),
    writing to files (a pipe left unread could block it)."""
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "stdout", "wb") as out, open(logs / "stderr", "wb") as err:
        return subprocess.Popen([DSQNET, *args], env=env, stdout=out, stderr=err, start_new_session=True,
                                preexec_fn=hears_ctrl_c)


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
    assert main(detect_args(inputs, out)) == 0
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


def interrupt(inputs, out: Path, env: dict, signum: int, to_group: bool, workers: int,
              own_api: bool) -> tuple[int, str, str, int]:
    """Run detect (on ``workers`` Dask workers, with Prefect's temporary API server if ``own_api``), signal it
    once a block is done, and check that it ends at once with nothing left running; returns rc, stdout,
    stderr and the blocks done."""
    if own_api:
        env = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}
        env["PREFECT_HOME"] = str(out / "prefect-home")
    logs = out / "logs"
    run = start(detect_args(inputs, out, workers=workers), env, logs)
    try:
        wait_for(lambda: inferred(out) >= 1, "block inferred", run)
        children = psutil.Process(run.pid).children(recursive=True)
        commands = [" ".join(c.cmdline()) for c in children]
        assert any("uvicorn" in c for c in commands) == own_api, commands  # Prefect's temporary API server
        assert sum("spawn_main" in c for c in commands) >= (workers if workers > 1 else 0), commands  # Dask's
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
    rc, stdout, stderr, done = interrupt(inputs, out, cli_env(prefect_api), signal.SIGINT, to_group=True,
                                       workers=2, own_api=True)
    assert rc == 130
    plural = "s" if done != 1 else ""
    assert stderr.splitlines()[-1] == \
        f"dsqnet detect: interrupted; rerun the same command to resume from {done} done block{plural}"
    assert "Traceback" not in stdout + stderr and "Error" not in stdout + stderr, stderr[-3000:]

    assert main(detect_args(inputs, out)) == 0  # the same numbers on one worker in this process, and quicker
    manifest = json.loads((out / "spot" / "run.json").read_text())
    assert (manifest["blocks"]["reused"], manifest["blocks"]["computed"]) == (done, BLOCKS - done)
    assert_same_outputs(out / "spot", reference)


def test_sigterm_to_the_run_alone_stops_it_likewise(prefect_api, inputs, tmp_path):
    out = tmp_path / "runs"
    rc, stdout, stderr, done = interrupt(inputs, out, cli_env(prefect_api), signal.SIGTERM, to_group=False,
                                       workers=1, own_api=False)
    assert rc == 143
    plural = "s" if done != 1 else ""
    said = f"stopped by SIGTERM; rerun the same command to resume from {done} done block{plural}"
    assert stderr.splitlines()[-1] == f"dsqnet detect: {said}"
    assert "Traceback" not in stdout + stderr, stderr[-3000:]
    assert (stdout + stderr).count("stopped by SIGTERM") == 1, stderr[-3000:]  # said once, by the last line
    # its flow runs are Cancelled in the API with the same words, not left Running
    assert flow_run_states(out) == {"detect-changes": ("CANCELLED", said), "infer-blocks": ("CANCELLED", said)}


def flow_run_states(out: Path) -> dict[str, tuple[str, str]]:
    """Flow name -> (state, message) of the flow runs in this session's Prefect API of the detect run
    into ``out`` and of its subflow."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(limit=200)
        parents = [run for run in runs if run.parameters.get("out") == str(out)]
        ours = parents + [run for run in runs if run.parent_task_run_id and
                          client.read_task_run(run.parent_task_run_id).flow_run_id in {p.id for p in parents}]
        return {client.read_flow(run.flow_id).name: (run.state.type.value, run.state.message) for run in ours}


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_second_run_of_the_same_work_is_refused_naming_the_first_and_another_run_goes_ahead(
        prefect_api, inputs, tmp_path):
    out, env = tmp_path / "runs", cli_env(prefect_api)
    lock = out / ".cache" / "spot.lock"
    first = start(detect_args(inputs, out, windows=FAST), env, tmp_path / "first")
    try:
        wait_for(lambda: (owner := read_owner(lock, patience=0)) is not None and owner.pid == first.pid,
                 "lock taken by the first run", first)
        os.killpg(first.pid, signal.SIGSTOP)  # the first run keeps its work, however long the others take
        cache = digest(out / ".cache" / "spot")
        second = start(detect_args(inputs, out, windows=FAST), env, tmp_path / "second")
        rc, _, stderr = finished(second, tmp_path / "second")
        started = read_owner(lock).describe().rpartition("started ")[2]
        assert rc == 1, stderr[-3000:]
        assert stderr.splitlines()[-1] == (
            f"dsqnet detect: error: run folder {out / 'spot'} is being written by another dsqnet run "
            f"(pid {first.pid} on {socket.gethostname()}, started {started}); wait for it to finish or choose "
            "another --run-name (parameter 'run_name')")
        assert re.fullmatch(r"\d\d:\d\d UTC", started)
        assert digest(out / ".cache" / "spot") == cache  # the second run touched nothing of the first's
        assert main(detect_args(inputs, out, name="other", windows=FAST)) == 0  # other work goes ahead meanwhile
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    rc, _, stderr = finished(first, tmp_path / "first")
    assert rc == 0, stderr[-3000:]
    manifest = json.loads((out / "spot" / "run.json").read_text())
    assert (manifest["blocks"]["reused"], manifest["blocks"]["computed"]) == (0, BLOCKS)
    assert_same_outputs(out / "other", out / "spot")
    assert not [p.name for p in out.iterdir() if ".partial-" in p.name]
