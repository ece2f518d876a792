"""What does a detect-changes run cost when the network costs nothing?

The whole flow as ``dsqnet detect`` runs it (Prefect API already up, the default local cluster,
scenes.zarr, blocks, stitching, COGs, polygons, preview, run.json) on a generated two-date region,
with the network replaced by one that returns "no change" at once. What remains is the
pipeline's own cost per run: on a CPU it is what a region adds to the network's time, on a GPU
most of the run. The first run also loads the (real) model file in its worker; later runs reuse
it, as runs in one process do (``monitor-region``).

    python bench/flow_overhead.py                     # 2048², three runs
    python bench/flow_overhead.py --size 4096 --runs 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from pipeline import prefect_api_start, write_catalogs  # bench/ is on the path when run as a script

from dsqnet import build_model
from dsqnet.weights.model_file import save


class NoChange:
    """A network that answers at once: probability 0 for every pixel of every window."""

    def __init__(self, predictor) -> None:
        self.device = predictor.device

    def predict_proba(self, before, after) -> torch.Tensor:
        return torch.zeros(len(before), before.shape[-2], before.shape[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--block-size", type=int, default=2048)
    args = parser.parse_args()

    import flows.detect

    load_model = flows.detect.cached_predictor  # the real loader, so the first run pays the model's load
    flows.detect.cached_predictor = lambda *a, **kw: NoChange(load_model(*a, **kw))
    with tempfile.TemporaryDirectory(prefix="dsqnet-overhead-") as tmp:
        work = Path(tmp)
        torch.manual_seed(0)
        model = save(build_model("dsqnet_swin_t"), work / "model.safetensors")
        catalog, region = write_catalogs([args.size], work)[args.size]
        print(f"prefect API start (not in the runs): {prefect_api_start():.1f} s")
        seconds = []
        for k in range(args.runs):
            started = time.perf_counter()
            summary = flows.detect.detect_changes(
                region=region, before="2021-06-10", after="2023-06-12", catalog=str(catalog), model=str(model),
                out=str(work / f"runs_{k}"), run_name="overhead", block_size=args.block_size, workers=1)
            seconds.append(time.perf_counter() - started)
            print(json.dumps({"run": k, "seconds": round(seconds[-1], 2), "timings": summary["timings"]}))
    print(f"{args.size}²: {statistics.median(seconds):.2f} s per run (median of {args.runs}); "
          f"steps outside the flow's timings are Prefect's start and end of the run")


if __name__ == "__main__":
    main()
