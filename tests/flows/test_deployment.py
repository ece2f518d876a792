"""The detect-changes deployment from prefect.yaml, run the way users run it: a Prefect server on
127.0.0.1, `prefect deploy`, `prefect deployment run`, and a process worker that picks the run up."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
import rasterio

from flows.runtime.allocator import KEEP_FREED
from tests.flows.flow_helpers import FAST, hole_catalog, tiny_model_file
from tests.helpers import hears_ctrl_c

REPO = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).parent / "prefect")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "DO_NOT_TRACK": "1", "PREFECT_UI_ENABLED": "false", "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
           "PROJECT_DIR": str(REPO)}
    log = open(tmp_path / "server.log", "w")
    process = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port),
                                "--analytics-off", "--no-ui"], env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2)
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
                time.sleep(0.5)
        yield env
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        log.close()


def prefect(env: dict, *args: str, timeout: float = 300) -> str:
    done = subprocess.run([PREFECT, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def api(env: dict, path: str, query: dict | None = None):
    url = f"{env['PREFECT_API_URL']}/{path}"
    request = urllib.request.Request(url, data=json.dumps(query).encode(), headers={"Content-Type": "application/json"}) \
        if query is not None else url
    return json.loads(urllib.request.urlopen(request, timeout=10).read())


def wait_for(condition, what: str, worker: subprocess.Popen, logs: Path, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert worker.poll() is None, f"the worker ended before {what}:\n{logs.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {what} after {timeout:.0f} s:\n{logs.read_text()[-3000:]}"
        time.sleep(0.2)
    return value


def sigterm_pending(pid: int) -> bool:
    """Whether a SIGTERM waits for the stopped process ``pid`` (the kernel's pending set, /proc)."""
    status = Path(f"/proc/{pid}/status").read_text()
    pending = next(int(line.split()[1], 16) for line in status.splitlines() if line.startswith("ShdPnd:"))
    return bool(pending & (1 << (signal.SIGTERM - 1)))


def stop_worker(worker: subprocess.Popen, logs: Path, timeout: float = 60) -> str | None:
    """Ctrl-C to the worker's group, as a user stops it: None once it has exited, else what was still
    running, with every thread's stack (faulthandler, which the worker's processes have on, prints
    them on SIGABRT into the worker's log) so that a worker that does not stop says why."""
    os.killpg(worker.pid, signal.SIGINT)
    try:
        worker.wait(timeout=timeout)
        return None
    except subprocess.TimeoutExpired:
        processes = [psutil.Process(worker.pid), *psutil.Process(worker.pid).children(recursive=True)]
        alive = [f"{p.pid} {p.status()} threads={p.num_threads()}: {' '.join(p.cmdline())}" for p in processes]
        os.killpg(worker.pid, signal.SIGABRT)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        return "\n".join(alive) + "\n" + logs.read_text()[-20000:]


def final_state(env: dict, flow_run_id: str) -> str | None:
    state = api(env, f"flow_runs/{flow_run_id}")["state"]["type"]
    return state if state in ("COMPLETED", "CANCELLED", "FAILED", "CRASHED") else None


def test_deploy_run_cancel_and_rerun_the_detect_deployment(server, tmp_path):
    """The deployments as users run them; a run cancelled midway stops at once, says in one line of its
    logs how far it got, and the next run of the same parameters resumes from there."""
    catalog, region = hole_catalog(tmp_path / "scenes")
    model = tiny_model_file(tmp_path / "tiny.safetensors")
    out = tmp_path / "runs"
    for pool in ("local-process", "gpu-process"):
        prefect(server, "work-pool", "create", pool, "--type", "process")
    deployed = prefect(server, "--no-prompt", "deploy", "--all")
    assert "detect-changes/detect-changes" in deployed and "detect-changes/detect-changes-gpu" in deployed
    assert "evaluate-model/evaluate-model" in deployed and "retrain-model/retrain-model" in deployed
    assert "monitor-region/monitor-demo-town" in deployed and "monitor-region/monitor-vienna-north" in deployed
    params = {"region": json.loads(region), "before": "2021-06-10", "after": "2023-06-12", "catalog": str(catalog),
              "model": str(model), "out": str(out), "run_name": "spot", "block_size": 512, "workers": 1,
              **FAST, "stride": 32}  # four blocks of seconds each: the cancel lands midway

    def run_deployment() -> str:
        started = prefect(server, "deployment", "run", "detect-changes/detect-changes", "--params", json.dumps(params))
        return re.search(r"UUID: ([0-9a-f-]{36})", started).group(1)

    sums = out / ".cache" / "spot" / "change_prob_window_sums"
    logs = tmp_path / "worker.log"
    with open(logs, "w") as log:
        worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", "local-process", "--type", "process"],
                                  env={**server, "PREFECT_WORKER_QUERY_SECONDS": "1", "PYTHONFAULTHANDLER": "1"},
                                  cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                  preexec_fn=hears_ctrl_c)
    try:
        cancelled = run_deployment()
        engine = wait_for(lambda: next((p for p in psutil.Process(worker.pid).children(recursive=True)
                                        if "prefect.engine" in " ".join(p.cmdline())), None), "run's process", worker, logs)
        # the pool's job variables from prefect.yaml reach the run's process as it starts
        assert {k: v for k, v in engine.environ().items() if k in KEEP_FREED} == {k: str(v) for k, v in KEEP_FREED.items()}
        wait_for(lambda: sums.is_dir() and any(sums.glob("block-*.npy")), "block inferred", worker, logs)
        engine.suspend()  # held midway, however loaded the machine, until the worker's SIGTERM is on its way
        api(server, f"flow_runs/{cancelled}/set_state", {"state": {"type": "CANCELLING"}, "force": True})  # as `prefect flow-run cancel`
        wait_for(lambda: sigterm_pending(engine.pid), "SIGTERM from the worker", worker, logs, 60)
        engine.resume()
        assert wait_for(lambda: final_state(server, cancelled), "final state", worker, logs, 90) == "CANCELLED"
        assert not psutil.Process(worker.pid).children(recursive=True)  # the run's process, and its cluster's, are gone
        done = len(list(sums.glob("block-*.npy")))
        messages = [entry["message"] for entry in api(server, "logs/filter", {"logs": {"flow_run_id": {"any_": [cancelled]}}})]
        said = [int(m[1]) for text in messages if (m := re.fullmatch(
            r"detect-changes: stopped by SIGTERM; run it again with the same parameters to resume from (\d+) done "
            r"blocks?", text))]
        assert len(said) == 1 and 1 <= said[0] <= done < 4, messages  # a block in flight may land after the line
        assert not (out / "spot").exists()

        resumed = run_deployment()
        assert wait_for(lambda: final_state(server, resumed), "final state", worker, logs) == "COMPLETED"
    finally:
        hung = stop_worker(worker, logs)
    assert hung is None, f"the worker did not stop within 60 s of SIGINT; what was left:\n{hung}"
    manifest = json.loads((out / "spot" / "run.json").read_text())
    assert manifest["flow_run_id"] == resumed
    assert (manifest["blocks"]["reused"], manifest["blocks"]["computed"]) == (done, 4 - done)
    with rasterio.open(out / "spot" / "change.tif") as src:
        assert src.crs.to_epsg() == 32633 and src.overviews(1)
    assert "Traceback" not in logs.read_text(), logs.read_text()[-5000:]
