from __future__ import annotations

import os

import pytest
import torch


# Read once: a Dask LocalCluster started in this process rewrites OMP_NUM_THREADS here to 1.
THREADS = int(os.environ.get("OMP_NUM_THREADS", 2))


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    torch.set_num_threads(THREADS)
