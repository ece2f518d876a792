"""How soon does a detect run whose first block fails say so, while its scenes are still loading?

A block can fail early (a card out of memory at the batch size asked for, a worker lost). The run
fails either way; what the user waits for is the error. The flow runs on a generated two-date
catalog (as ``bench/pipeline.py``'s), with a network that fails on its first batch, on the local
cluster of a one-GPU machine (one in-process worker, two blocks at once). Reported: when the first
block failed, when the load ended, and when the run raised, in seconds from the flow's start. Since
stop 34 the load stops before its next tiles; before, the run raised only once the whole load had
finished. With ``--busy-batch-s``, the other block keeps going, a batch at a time inside torch:
since stop 34 it stops before its next batch; before, the run waited 30 s for Dask to close the
worker, and the process aborted at exit (-6) with that block's thread still inside torch.

    python -m bench.failing_run --size 8192
    python -m bench.failing_run --size 4096 --busy-batch-s 0.5
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import tempfile
import time
from pathlib import Path

import torch

import flows.detect
import flows.workers.cluster
from bench.pipeline import prefect_api_start, replace, write_catalog
from dsqnet.model import build_model
from dsqnet.weights.model_file import save

moments: dict[str, float] = {}


class FailingNetwork:
    """Fails on its first batch, as a network out of GPU memory does; with ``busy_s``, every other
    batch (the other block the worker runs at once) takes that long inside torch instead."""

    device = torch.device("cpu")
    calls = itertools.count(1)  # next() is atomic: the worker's two blocks call at once

    def __init__(self, busy_s: float = 0.0) -> None:
        self.busy_s = busy_s

    def predict_proba(self, before, after) -> torch.Tensor:
        if next(FailingNetwork.calls) == 1 or not self.busy_s:
            moments.setdefault("first block failed", time.perf_counter())
            raise RuntimeError("CUDA out of memory (the bench's failing network)")
        product, until = torch.randn(1000, 1000), time.perf_counter() + self.busy_s
        while time.perf_counter() < until:
            product = torch.mm(product, product) / 1000
        return torch.zeros(after.shape[0], *after.shape[2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=8192, help="the region's side in pixels")
    parser.add_argument("--busy-batch-s", type=float, default=0.0,
                        help="the other block's batches take this long inside torch (default 0: they fail too)")
    args = parser.parse_args()
    # this file imported by its name: Dask pickles the task with the network, and a class of __main__
    # would travel by value, noting its failure in a copy of ``moments``
    from bench.failing_run import FailingNetwork, moments

    network = FailingNetwork(args.busy_batch_s)
    replace(flows.detect, "cached_predictor", lambda *_, **__: network)
    replace(flows.detect, "warming_up", lambda *_, **__: contextlib.nullcontext())
    replace(flows.workers.cluster, "local_gpu_count", lambda: 1)
    prepare = flows.detect.prepare_chosen

    def timed_prepare(*a, **kw):
        try:
            return prepare(*a, **kw)
        finally:
            moments["load ended"] = time.perf_counter()

    replace(flows.detect, "prepare_chosen", timed_prepare)
    with tempfile.TemporaryDirectory(prefix="dsqnet-bench-") as tmp:
        work = Path(tmp)
        model = save(build_model("dsqnet_swin_t"), work / "model.safetensors")
        catalog, region = write_catalog(work / "scenes", args.size)
        prefect_api_start()
        started = time.perf_counter()
        try:
            flows.detect.detect_changes(region=region, before="2021-06-10", after="2023-06-12", catalog=str(catalog),
                                        model=str(model), out=str(work / "runs"), run_name="failing",
                                        block_size=2048, batch_size=16, workers=1)
        except RuntimeError as err:
            moments["run raised"] = time.perf_counter()
            error = str(err)
        else:
            raise SystemExit("the run did not fail: the failing network was not used")
    print(json.dumps({"size": args.size, "error": error,
                      **{k: round(v - started, 2) for k, v in sorted(moments.items(), key=lambda kv: kv[1])}}))


if __name__ == "__main__":
    main()
