"""The workers that run blocks: which Dask cluster, which device, and one model per worker process.

By default each run starts a local Dask cluster sized to the machine: one worker per GPU (each
advertising a ``GPU`` resource and using its own card) or, without GPUs, workers that share the
CPU cores between them; a single worker runs in the flow's own process. ``dask_address`` (or
``DSQNET_DASK_ADDRESS``) attaches to an existing cluster instead, e.g. GPU machines running
``dask worker tcp://scheduler:8786 --nthreads 2 --resources GPU=1``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import dask
import torch

from dsqnet import Predictor
from dsqnet.predictor import resolve_device
from dsqnet.weights.model_file import load_model_file
from flows.runtime.allocator import keep_freed_memory

DASK_ADDRESS_ENV = "DSQNET_DASK_ADDRESS"
# Read once, at import: starting a local cluster makes Dask's nanny write OMP_NUM_THREADS=1 into this
# process's own environment, so by the next run the variable no longer says what the user asked for.
USER_THREADS = os.environ.get("OMP_NUM_THREADS")
# Blocks a GPU works on at once. While one block's windows run on the card, the other is read from
# zarr, has its task bookkept by Prefect or its sums stored, all CPU work that would otherwise leave
# the card idle between blocks. The forwards themselves take turns (``device_lock``), so a second
# block costs the card no activation memory, only the block's pixels and sums (about 70 MB at 2048).
BLOCKS_PER_GPU = 2


# Dask's periodic work in a cluster's event loop: a stack sample of each running task every 10 ms
# (for the dashboard's profiler, which no local cluster here serves), a latency tick every 20 ms,
# memory and CPU polls every 100-500 ms. Each takes the GIL from the thread that runs the network,
# between its operations. On 2 CPU cores, in-process worker, the same forwards in a Prefect task
# ran 8-10 % slower than alone under Dask's defaults (the loop used 0.7-0.8 s of CPU per 15 s),
# and as fast as alone under these (0.05 s). Clusters the user starts keep their own settings.
QUIET_LOCAL_CLUSTER = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.memory.monitor-interval": "1s",
}


def quiet_local_cluster():
    """Dask settings for the clusters that start in this context (``QUIET_LOCAL_CLUSTER``)."""
    return dask.config.set(QUIET_LOCAL_CLUSTER)


def dask_task_runner(address: str | None = None, workers: int | None = None):
    """Prefect's Dask task runner for a run: an existing cluster, or a local one sized to this machine."""
    from flows.workers.task_runner import RunTaskRunner as DaskTaskRunner

    address = address or os.environ.get(DASK_ADDRESS_ENV)
    if address:
        return DaskTaskRunner(address=address)
    kwargs = local_cluster_kwargs(workers)
    if kwargs["processes"]:
        # Every worker process starts with the same thread settings, whatever an earlier cluster wrote
        # into this process's environment: the numerics of a forward pass depend on them, and a
        # resumed run must reproduce an uninterrupted one bit for bit.
        threads = str(local_worker_threads(workers))
        kwargs["env"] = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}
        api_url = _current_api_url()
        if api_url:  # workers report to this run's API, not to a temporary server each of their own
            kwargs["env"]["PREFECT_API_URL"] = api_url
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=kwargs)


def _current_api_url() -> str | None:
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            return str(client.api_url)
    except Exception:  # no API reachable from here: let the workers find their own
        return None


def local_cluster_kwargs(workers: int | None = None) -> dict[str, Any]:
    """One worker per GPU, or CPU workers with the cores split between them.

    A single worker runs inside this process (Dask threads, no worker process): a worker process
    would import torch again, which costs more than a small region's network time on a GPU; in
    this process the model also stays loaded for the next run (``monitor-region`` runs one detect
    per pair) and memory is lower. Several workers get a process each, so that they do not share a
    GIL.
    """
    gpus = local_gpu_count()
    # a CPU worker's torch uses several cores; more workers than cores/4 only adds memory
    n_workers = workers or gpus or max(1, (os.cpu_count() or 1) // 4)
    kwargs = {"n_workers": n_workers, "threads_per_worker": 1, "processes": n_workers > 1, "dashboard_address": None}
    if gpus:
        return {**kwargs, "threads_per_worker": BLOCKS_PER_GPU, "resources": {"GPU": 1}}
    return kwargs


def local_gpu_count() -> int:
    """CUDA cards on this machine, one local worker each (the bench's stand-in plays a one-GPU machine here)."""
    return torch.cuda.device_count()


def local_worker_threads(workers: int | None = None) -> int:
    """Torch threads per local worker: the user's OMP_NUM_THREADS, else the cores split between workers."""
    if USER_THREADS and USER_THREADS.isdigit() and int(USER_THREADS) > 0:
        return int(USER_THREADS)
    return max(1, (os.cpu_count() or 1) // local_cluster_kwargs(workers)["n_workers"])


def cluster_has_gpus(client) -> bool:
    """Whether any worker of the cluster advertises a ``GPU`` resource (then block tasks ask for one)."""
    workers = client.scheduler_info().get("workers", {})
    return any(info.get("resources", {}).get("GPU", 0) > 0 for info in workers.values())


def block_task_resources(client) -> dict[str, Any]:
    """Dask annotations for block tasks: on a cluster with GPU workers, a share of a ``GPU``.

    Block tasks then go to GPU workers only, and a worker advertising ``GPU=1`` with two threads
    takes ``BLOCKS_PER_GPU`` blocks at once; on a CPU-only cluster they ask for nothing.
    """
    return {"resources": {"GPU": 1 / BLOCKS_PER_GPU}} if cluster_has_gpus(client) else {}


_device_locks: dict[str, threading.Lock] = {}
_device_locks_guard = threading.Lock()


def device_lock(device: str) -> threading.Lock:
    """One lock per device of this process: the blocks that share a GPU run their batches in turn."""
    with _device_locks_guard:
        return _device_locks.setdefault(str(device), threading.Lock())


def worker_device(requested: str = "auto") -> torch.device:
    """The device for this worker: the requested one, else a GPU (one per local worker) or the CPU."""
    if requested != "auto":
        return resolve_device(requested)
    if not torch.cuda.is_available():
        return torch.device("cpu")
    try:
        from distributed import get_worker

        name = get_worker().name
        index = name if isinstance(name, int) else 0
    except (ImportError, ValueError):  # not on a Dask worker
        index = 0
    return torch.device("cuda", index % torch.cuda.device_count())


_loading = threading.Lock()


def cached_predictor(model_path: str, model_hash: str, precision: str, device: str, threads: int | None) -> Predictor:
    """The model, loaded once per worker process and kept for every block it runs.

    ``model_hash`` is part of the cache key, so a model file replaced between runs is reloaded. The
    blocks that share a GPU start at once; the lock makes the second wait for the first's model
    instead of loading its own copy onto the card.
    """
    with _loading:
        return _load_predictor(model_path, model_hash, precision, device, threads)


def runs_in_this_process(address: str | None, workers: int | None) -> bool:
    """Whether this run's blocks will run in this process: a local cluster of one in-process worker."""
    return not (address or os.environ.get(DASK_ADDRESS_ENV)) and not local_cluster_kwargs(workers)["processes"]


def outputs_while_blocks_run(address: str | None, workers: int | None, device: str) -> str | None:
    """How the blocks' shares of the outputs are made while blocks run (flows/outputs/per_block.py):
    ``"processes"``, ``"threads"``, or None for after the last block.

    Only where cores are free while the network runs. A network that feeds a GPU from this process
    needs this process's GIL, so the outputs go to child processes; a network on other machines, or
    in worker processes of its own, leaves this process to the outputs' threads. A network on this
    machine's CPU cores has none to spare: overlapping would only move the same work into its time,
    and a child process would add its start (about 2 s of a core) and 0.2-0.6 GB.
    """
    local = not (address or os.environ.get(DASK_ADDRESS_ENV))
    gpus_here = local and device != "cpu" and local_gpu_count() > 0
    if local and not gpus_here:
        return None
    return "processes" if gpus_here and runs_in_this_process(address, workers) else "threads"


@contextmanager
def warming_up(model_path: str, model_hash: str, precision: str, device: str, threads: int | None,
               batch_size: int, window: int) -> Iterator[threading.Thread]:
    """Load the model for this process's worker while the flow still reads the scenes; on a GPU, also
    run one batch of blank windows through it, so the card's first kernels are loaded by then too.

    Otherwise the first blocks pay for loading the weights and starting the card while reading the
    scenes leaves the GPU idle. A failure here is ignored: the worker loads the model again and
    reports what went wrong, in its own task.

    Leaving the ``with`` waits for the load, however the run ends. A run refused a moment later (its
    run folder busy, its scenes missing) would otherwise exit while the thread is inside torch: at
    interpreter exit Python ends such a thread by unwinding its C++ frames, and the process aborts
    ("terminate called without an active exception", exit -6) after printing its one clear line.
    A run that ends skips the blank batch, so it waits for the weights only.
    """
    ending = threading.Event()

    def warm() -> None:
        try:
            predictor = cached_predictor(model_path, model_hash, precision, device, threads)
            # a CPU needs no warming (its cores read the scenes), nor a run that is ending
            if predictor.device.type == "cuda" and not ending.is_set():
                blank = torch.zeros(batch_size, 3, window, window, device=predictor.device)
                with device_lock(str(predictor.device)):
                    predictor.predict_proba(blank, blank)
                    torch.cuda.synchronize(predictor.device)
        except Exception:  # noqa: BLE001 - the worker's own load says what is wrong, where it matters
            pass

    thread = threading.Thread(target=warm, name="model-warm-up", daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        ending.set()
        thread.join()


@lru_cache(maxsize=2)
def _load_predictor(model_path: str, model_hash: str, precision: str, device: str, threads: int | None) -> Predictor:
    if threads:
        torch.set_num_threads(threads)
    reuse_freed_memory()
    return Predictor(load_model_file(model_path), device=worker_device(device), precision=precision)


def reuse_freed_memory() -> None:
    """Let this worker's allocator keep freed memory for the next batch and block (flows/runtime/allocator.py).

    Dask's nanny starts every worker with ``MALLOC_TRIM_THRESHOLD_=65536`` so that idle workers
    give memory back quickly. Setting that variable also freezes glibc's mmap threshold at 128 kB,
    so each activation of a forward pass becomes a fresh mmap that is page-faulted in and unmapped
    again, which makes forwards in a worker markedly slower than in a plain process. A model worker
    allocates the same sizes every batch, so it is better served by reusing them: both thresholds
    are set here whatever the environment says, since the nanny's value cannot be told from a user's.
    """
    keep_freed_memory(override=("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"))


def blocks_in_flight() -> int:
    """How many blocks this worker runs at once: its Dask threads (1 outside a worker)."""
    try:
        from distributed import get_worker

        return get_worker().state.nthreads
    except (ImportError, ValueError):
        return 1

