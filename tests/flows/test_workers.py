"""How local workers are sized, whatever Dask does to this process's environment."""

from __future__ import annotations

import os

from distributed import LocalCluster

from flows import workers


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
