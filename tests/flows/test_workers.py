"""How local workers are sized, whatever Dask does to this process's environment."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dask
from distributed import LocalCluster

from flows.workers import cluster as workers
from tests.flows.flow_helpers import tiny_model_file


def test_worker_threads_do_not_follow_what_a_local_cluster_writes_into_the_environment(monkeypatch):
    monkeypatch.setattr(workers, "USER_THREADS", None)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # monkeypatch restores the variable afterwards
    monkeypatch.delenv("OMP_NUM_THREADS")
    expected = max(1, (os.cpu_count() or 1) // workers.local_cluster_kwargs(1)["n_workers"])
    assert workers.local_worker_threads(1) == expected
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None):
        assert os.environ.get("OMP_NUM_THREADS") == "1"  # Dask's nanny set it in this very process
        assert workers.local_worker_threads(1) == expected  # the next run's workers still get every core


def test_the_users_thread_count_wins(monkeypatch):
    monkeypatch.setattr(workers, "USER_THREADS", "1")
    assert workers.local_worker_threads(1) == 1


def test_a_one_gpu_machine_gets_an_in_process_worker_that_takes_two_blocks_at_once(monkeypatch):
    monkeypatch.setattr(workers, "local_gpu_count", lambda: 1)
    kwargs = workers.local_cluster_kwargs()
    assert kwargs["n_workers"] == 1 and not kwargs["processes"]
    assert kwargs["threads_per_worker"] == workers.BLOCKS_PER_GPU == 2 and kwargs["resources"] == {"GPU": 1}


_in_flight = {"now": 0, "most": 0}
_in_flight_guard = threading.Lock()


def _block_like(_: int) -> None:
    """Stands in for a block task (module level, so that Dask pickles it by reference)."""
    with _in_flight_guard:
        _in_flight["now"] += 1
        _in_flight["most"] = max(_in_flight["most"], _in_flight["now"])
    time.sleep(0.3)
    with _in_flight_guard:
        _in_flight["now"] -= 1


def test_block_tasks_take_a_share_of_a_gpu_so_a_card_runs_two_at_a_time():
    """On a worker with ``GPU=1`` and four threads, block tasks run two at a time: not one (the card
    would wait while a block is read) and not four (they would crowd one card)."""
    from distributed import Client

    _in_flight.update(now=0, most=0)
    with LocalCluster(n_workers=1, threads_per_worker=4, processes=False, resources={"GPU": 1},
                      dashboard_address=None) as cluster, Client(cluster) as client:
        with dask.annotate(**workers.block_task_resources(client)):
            futures = [client.submit(_block_like, k, pure=False) for k in range(6)]
        client.gather(futures)
    assert _in_flight["most"] == workers.BLOCKS_PER_GPU


def test_blocks_that_start_at_once_share_one_loaded_model(tmp_path):
    model = str(tiny_model_file(tmp_path / "tiny.safetensors"))
    with ThreadPoolExecutor(4) as pool:
        predictors = list(pool.map(lambda _: workers.cached_predictor(model, "at-once", "fp32", "cpu", None), range(4)))
    assert all(p is predictors[0] for p in predictors)


def test_local_clusters_start_without_the_periodic_work_that_takes_the_gil():
    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster:
        assert "profile" in next(iter(cluster.workers.values())).periodic_callbacks  # Dask's default
    with workers.quiet_local_cluster(), LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster:
        worker = next(iter(cluster.workers.values()))
        assert "profile" not in worker.periodic_callbacks
        every_ms = {name: callback.callback_time for name, callback in worker.periodic_callbacks.items()}
        assert min(every_ms["tick"], every_ms["monitor"], every_ms["memory_monitor"]) >= 1000  # Dask: 20, 500, 100


def test_a_worker_knows_how_many_blocks_it_runs_at_once():
    """The allocator is trimmed after a block only where the block ran alone (``blocks_in_flight() == 1``)."""
    from distributed import Client

    assert workers.blocks_in_flight() == 1  # outside a worker
    for threads in (1, 2):
        with LocalCluster(n_workers=1, threads_per_worker=threads, processes=False, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            assert client.submit(workers.blocks_in_flight, pure=False).result() == threads


def test_the_model_is_warmed_up_in_the_background_for_the_worker_in_this_process(tmp_path):
    model = str(tiny_model_file(tmp_path / "tiny.safetensors"))
    workers._load_predictor.cache_clear()
    with workers.warming_up(model, "warm", "fp32", "cpu", None, batch_size=2, window=64) as thread:
        thread.join(timeout=60)
        assert workers._load_predictor.cache_info().currsize == 1  # loaded before any block asked for it
        workers.cached_predictor(model, "warm", "fp32", "cpu", None)
    assert workers._load_predictor.cache_info().hits == 1 and workers._load_predictor.cache_info().misses == 1


def test_a_failed_warm_up_is_left_for_the_worker_to_report(tmp_path, monkeypatch):
    escaped = []  # an exception leaving a thread goes to threading.excepthook (printed, never raised here)
    monkeypatch.setattr(threading, "excepthook", escaped.append)
    workers._load_predictor.cache_clear()
    with workers.warming_up(str(tmp_path / "missing.safetensors"), "gone", "fp32", "cpu", None, 2, 64) as thread:
        pass
    assert not thread.is_alive() and workers._load_predictor.cache_info().currsize == 0
    assert escaped == []


def test_a_run_that_ends_at_once_after_the_warm_up_began_exits_with_its_own_code(tmp_path):
    """A detect run refused just after the warm-up began (its run folder busy) printed its one line
    and then aborted (-6, "terminate called without an active exception"): the process exited while
    the warm-up thread was inside torch. The ``with`` waits for the load, so it exits as it means to."""
    model = tiny_model_file(tmp_path / "tiny.safetensors")
    refused_at_once = (f"import sys\nfrom flows.workers.cluster import warming_up\n"
                       f"with warming_up({str(model)!r}, 'h', 'fp32', 'cpu', None, 2, 64):\n"
                       f"    pass\nsys.exit(3)\n")
    for _ in range(3):  # unwaited, each of these aborted
        done = subprocess.run([sys.executable, "-c", refused_at_once], capture_output=True, text=True, timeout=120,
                              cwd=Path(__file__).parents[2])
        assert (done.returncode, done.stderr) == (3, "")


def test_only_a_run_whose_worker_shares_this_process_warms_up_here(monkeypatch):
    monkeypatch.delenv(workers.DASK_ADDRESS_ENV, raising=False)
    monkeypatch.setattr(workers, "local_gpu_count", lambda: 1)
    assert workers.runs_in_this_process(None, None)
    assert not workers.runs_in_this_process("tcp://scheduler:8786", None)
    assert not workers.runs_in_this_process(None, 2)  # two local workers: a process each
    monkeypatch.setenv(workers.DASK_ADDRESS_ENV, "tcp://scheduler:8786")
    assert not workers.runs_in_this_process(None, None)


def test_outputs_overlap_the_blocks_only_where_the_network_leaves_cores_free(monkeypatch):
    monkeypatch.delenv(workers.DASK_ADDRESS_ENV, raising=False)
    monkeypatch.setattr(workers, "local_gpu_count", lambda: 0)
    assert workers.outputs_while_blocks_run(None, None, "auto") is None  # the CPU runs the network
    assert workers.outputs_while_blocks_run("tcp://scheduler:8786", None, "auto") == "threads"
    monkeypatch.setattr(workers, "local_gpu_count", lambda: 1)
    assert workers.outputs_while_blocks_run(None, None, "auto") == "processes"  # fed from this process's GIL
    assert workers.outputs_while_blocks_run(None, None, "cpu") is None
    monkeypatch.setattr(workers, "local_gpu_count", lambda: 2)
    assert workers.outputs_while_blocks_run(None, None, "auto") == "threads"  # two GPU workers, a process each
