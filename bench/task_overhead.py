"""What one Prefect task costs the flow's process when it goes to Dask, as each block's task does.

A flow submits N tasks that do nothing to the runner ``detect-changes`` uses (``RunTaskRunner``,
the local cluster of one in-process worker, as on a one-GPU machine) and waits for them; reported:
the CPU seconds of this process for the whole flow run and per task, in a few runs of the same
process (the first pays for the cluster's start). With ``--prefect-runner`` the tasks go through
Prefect's own ``DaskTaskRunner`` instead, for comparison.

    python bench/task_overhead.py --tasks 16 64
    python bench/task_overhead.py --tasks 16 64 --prefect-runner
"""

from __future__ import annotations

import argparse
import json
import time

from pipeline import prefect_api_start  # bench/ is on the path when run as a script
from prefect import flow, task
from prefect_dask import DaskTaskRunner

from flows.workers.cluster import local_cluster_kwargs
from flows.workers.task_runner import RunTaskRunner


@task(name="nothing")
def nothing(k: int) -> int:
    return k


@flow(name="many-tasks")
def many_tasks(n: int) -> int:
    return len([f.result() for f in [nothing.submit(k) for k in range(n)]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--prefect-runner", action="store_true", help="Prefect's DaskTaskRunner, not ours")
    args = parser.parse_args()
    print(f"prefect API start (not in the rows): {prefect_api_start():.1f} s")
    runner_class = DaskTaskRunner if args.prefect_runner else RunTaskRunner
    for n in args.tasks:
        cpu = []
        for _ in range(args.runs):
            runner = runner_class(cluster_class="distributed.LocalCluster", cluster_kwargs=local_cluster_kwargs(1))
            started = time.process_time()
            many_tasks.with_options(task_runner=runner)(n)
            cpu.append(time.process_time() - started)
        print(json.dumps({"runner": runner_class.__name__, "tasks": n, "cpu_s": [round(c, 2) for c in cpu],
                          "cpu_ms_per_task": [round(1000 * c / n, 1) for c in cpu]}))


if __name__ == "__main__":
    main()
