"""The Dask task runner's tasks run under their flow's settings, dumped once for all of them."""

from __future__ import annotations

import pickle

from prefect import flow, task
from prefect.context import SettingsContext
from prefect.settings import PREFECT_TASK_DEFAULT_RETRY_DELAY_SECONDS, get_current_settings, temporary_settings

from flows.workers.task_runner import RunTaskRunner


@task(name="settings-seen")
def retry_delay_seen() -> object:
    return get_current_settings().tasks.default_retry_delay_seconds


@flow(name="settings-under-dask")
def delays_seen_by_tasks() -> list:
    seen = []
    for delay in (7, 7, 11):  # the third task under other settings than the first two
        with temporary_settings(updates={PREFECT_TASK_DEFAULT_RETRY_DELAY_SECONDS: delay}):
            seen.append(retry_delay_seen.submit().result())
    return seen


def test_tasks_on_a_worker_in_this_process_run_under_the_settings_they_were_sent_with(prefect_api):
    runner = RunTaskRunner(cluster_class="distributed.LocalCluster",
                           cluster_kwargs={"n_workers": 1, "threads_per_worker": 1, "processes": False,
                                           "dashboard_address": None})
    assert delays_seen_by_tasks.with_options(task_runner=runner)() == [7, 7, 11]


def test_the_settings_are_dumped_once_per_settings():
    runner = RunTaskRunner(cluster_kwargs={"processes": False})
    first, second = runner._settings_to_send(), runner._settings_to_send()
    assert first is not second  # a context each, so that threads can enter theirs at once
    assert first.serialize() is second.serialize()
    assert first.serialize()["settings"] is SettingsContext.get().settings  # this process's worker: the object
    with temporary_settings(updates={PREFECT_TASK_DEFAULT_RETRY_DELAY_SECONDS: 5}):
        assert runner._settings_to_send().serialize()["settings"].tasks.default_retry_delay_seconds == 5


def test_workers_in_other_processes_get_prefects_own_dump():
    runner = RunTaskRunner(cluster_kwargs={"processes": True})
    with temporary_settings(updates={PREFECT_TASK_DEFAULT_RETRY_DELAY_SECONDS: 13}):
        dump = runner._settings_to_send().serialize()
        assert dump == SettingsContext.get().serialize()
    received = SettingsContext(**pickle.loads(pickle.dumps(dump)))  # as a worker process hydrates it
    assert received.settings.tasks.default_retry_delay_seconds == 13
