"""detect-changes on a machine with a GPU: the local cluster gives the card a worker, and every block runs there.

Skipped where there is no CUDA GPU (CI has none); ``bench/gpu_check.sh`` runs it on a GPU machine.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import torch

from flows.detect import detect_changes
from tests.flows.flow_helpers import FAST, hole_catalog, tiny_model_file

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_blocks_run_on_the_gpu_worker_and_match_a_cpu_run(prefect_api, tmp_path):
    catalog, region = hole_catalog(tmp_path / "scenes")
    model = tiny_model_file(tmp_path / "tiny.safetensors")
    common = dict(region=region, before="2021-06-10", after="2023-06-12", catalog=str(catalog), model=str(model),
                  block_size=512, threshold=0.5, **FAST)
    detect_changes(**common, out=str(tmp_path / "gpu"), run_name="run")  # default cluster: one worker per GPU
    detect_changes(**common, out=str(tmp_path / "cpu"), run_name="run", device="cpu", workers=1)

    reports = json.loads((tmp_path / "gpu" / "run" / "run.json").read_text())["blocks"]["reports"]
    assert len(reports) > 1 and {r["device"] for r in reports} == {"cuda:0"}
    cpu_reports = json.loads((tmp_path / "cpu" / "run" / "run.json").read_text())["blocks"]["reports"]
    assert {r["device"] for r in cpu_reports} == {"cpu"}
    with rasterio.open(tmp_path / "gpu" / "run" / "change_prob.tif") as gpu, \
            rasterio.open(tmp_path / "cpu" / "run" / "change_prob.tif") as cpu:
        on_gpu, on_cpu = gpu.read(1), cpu.read(1)
    assert (np.isnan(on_gpu) == np.isnan(on_cpu)).all() and np.isnan(on_gpu).any()
    observed = ~np.isnan(on_cpu)
    assert np.abs(on_gpu[observed] - on_cpu[observed]).max() < 1e-3
