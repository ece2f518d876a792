"""Prefect's Dask task runner, with the run's process alone hearing the signals that stop a run,
and tasks submitted under a key of their own, with their settings dumped once.

Ctrl-C in a terminal and a Prefect worker cancelling a deployment's run both signal the run's whole
process group. A local cluster's worker processes would die of the signal at once, before the run's
own handler acts: the scheduler and the nanny then log connection errors with tracebacks and start
replacement workers, all onto the run's output. So the cluster is started with SIGINT and SIGTERM
blocked in the starting thread: the threads it starts and the worker processes they spawn inherit
that mask, and only the run's process handles the signal, by stopping its workers itself
(flows/runtime/interrupts.py). A cluster closing normally stops its workers without signals.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from multiprocessing import resource_tracker
from typing import Any
from uuid import uuid4

from prefect.context import SettingsContext
from prefect_dask import DaskTaskRunner
from prefect_dask.task_runners import PrefectDaskFuture
from pydantic import PrivateAttr

from flows.runtime.user_errors import UserError

STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


@contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """SIGINT and SIGTERM blocked in this thread, and so in every thread and process started meanwhile.

    Multiprocessing's resource tracker is started first: starting it unblocks both signals in the
    thread that starts it (it blocks them around its spawn, then unblocks instead of restoring),
    which would be the cluster's event-loop thread, the one that spawns the workers."""
    resource_tracker.ensure_running()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class RunTaskRunner(DaskTaskRunner):
    """A ``DaskTaskRunner`` whose local cluster starts with the stop signals blocked (see the module
    docstring), and whose tasks go to Dask under a key made here, with their settings dumped once."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._settings_dump: tuple[SettingsContext | None, dict[str, Any] | None] = (None, None)  # for, dump

    def submit(self, task, parameters: dict[str, Any], wait_for: Iterable | None = None,
               dependencies: dict | None = None) -> PrefectDaskFuture:
        """Prefect's submit, with the task's Dask key given: without one, Dask derives it by hashing
        the call, a new closure each time with a fresh task run id among its arguments, so every key
        is unique anyway. Hashing pickles that closure, which walks every loaded module (torch's
        thousands), and the task's parameters: 19 ms of the flow's CPU for each block's task
        (bench/HISTORY.md, stop 27). The task's Prefect settings go as one dump made for all tasks
        (``PresetSettingsContext``)."""
        if not self._started:
            raise RuntimeError("The task runner must be started before submitting work.")
        with self._settings_to_send():
            future = self.client.submit(
                task, key=f"{task.name}-{uuid4().hex}", parameters=self._optimize_futures(parameters),
                wait_for=self._optimize_futures(wait_for) if wait_for else None, dependencies=dependencies,
                return_type="state",
            )
        return PrefectDaskFuture(wrapped_future=future, task_run_id=future.task_run_id)

    def _settings_to_send(self) -> SettingsContext:
        """The Prefect settings in force, as a context that serialises as a dump made once for them
        (see ``PresetSettingsContext``); a fresh context each call, as threads may submit at once."""
        current = SettingsContext.get()
        made_for, dump = self._settings_dump
        if made_for is not current:
            dump = ({"profile": current.profile, "settings": current.settings} if self._workers_in_this_process
                    else current.serialize())
            self._settings_dump = (current, dump)
        return PresetSettingsContext(dump, profile=current.profile, settings=current.settings)

    @property
    def _workers_in_this_process(self) -> bool:
        return not self.address and self.cluster_kwargs.get("processes") is False

    @property
    def client(self):
        """The runner's Dask client; the first use starts the cluster (Prefect's runner starts it lazily)
        or connects to the user's, which may fail in many ways, none of them telling which setting to fix.
        Every task's submit asks for it: once made, it is returned as it is."""
        if self._client is not None:
            return self._client
        with stop_signals_blocked():
            if not self.address:
                return super().client
            try:
                return super().client
            except Exception as err:  # noqa: BLE001 - a timeout, a refusal, or something else answering there
                raise SchedulerUnreachable(
                    f"dask_address: the Dask scheduler at {self.address} cannot be used ({type(err).__name__}: "
                    f"{' '.join(str(err).split())[:200]}); check that a Dask scheduler of this version runs "
                    "there, or leave dask_address out for a local cluster") from None


class PresetSettingsContext(SettingsContext):
    """Prefect's settings context, serialised as a dump made beforehand.

    Prefect sends each task its flow's settings: it dumps the whole settings model for every task,
    and the worker validates the dump back into a settings model, which reads the environment,
    ``.env`` and the TOML files again for each of its dozens of nested models; all of it for the
    same settings each time. ``RunTaskRunner`` makes the dump once per settings. A worker in this
    process gets the settings objects themselves, which need no validation; others get Prefect's
    dump. Sixteen tasks on the worker in this process, as an 8192² run's blocks, took 1.11-1.21 CPU s
    of the flow's process, and 0.32-0.50 s with the dump made once (``python bench/task_overhead.py``,
    bench/HISTORY.md, stop 31).
    """

    _dump: dict[str, Any] = PrivateAttr()

    def __init__(self, dump: dict[str, Any], **fields: Any) -> None:
        super().__init__(**fields)
        self._dump = dump

    def serialize(self, include_secrets: bool = True) -> dict[str, Any]:
        return self._dump if include_secrets else super().serialize(include_secrets=False)


class SchedulerUnreachable(UserError):
    """The Dask cluster the run was told to use does not answer as one."""
