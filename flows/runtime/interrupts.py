"""Ctrl-C and SIGTERM during a command-line run: one line, nothing left running, a rerun resumes.

A run's processes share the terminal, so Ctrl-C reaches all of them at once: Prefect's temporary
API server would stop in the middle of the run and the Dask workers would print their tracebacks,
while the flow waits for them and retries the API. So ``interruptible`` runs the flow in a thread
of its own with SIGINT blocked there; every thread and process the flow starts inherits that, and
only this process's main thread hears the signal. Its handler then silences this process, stops
every process the run started (the local Dask cluster's workers, the temporary API server),
says in one line how far the run got and how to go on, and exits with 128 + the signal number
(130 for SIGINT, 143 for SIGTERM).

A Prefect worker cancels a deployment's run in another way: SIGTERM to the run's whole process
group, which Prefect's engine turns into ``TerminationSignal`` in the flow's thread before marking
the run Cancelled. ``cancellable`` flow bodies then stop the processes the run started and log the
same one line, worded for a deployment.

Stopping a run like this loses nothing the rerun needs: every output and cache entry is written
aside and renamed into place (flows/files/atomic.py), and a block's done marker is set only after
its pixels (flows/blocks/store.py), so the rerun of the same command infers only the blocks that
have no window sums yet, and its outputs equal an uninterrupted run's bit for bit.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from functools import wraps
from typing import Any, NoReturn, TypeVar

import psutil

from flows.runtime.flow_runs import cancel_open_runs, note_closed_run, note_open_run
from flows.runtime.terminal import progress_bar_open
from flows.runtime.user_errors import USER_ERROR_MARK

ResultT = TypeVar("ResultT")
FlowBodyT = TypeVar("FlowBodyT", bound=Callable[..., Any])
RERUN_COMMAND = "rerun the same command"
RERUN_DEPLOYMENT = "run it again with the same parameters"
SIGNALS = (signal.SIGINT, signal.SIGTERM)

_resume_points: list[Callable[[], int]] = []  # how many blocks the detect run in progress has done


def note_resume_point(done_blocks: Callable[[], int]) -> None:
    """Record how to count the blocks of the detect run this process now works on that a rerun will
    not compute again (the resume point an interrupted run reports)."""
    _resume_points[:] = [done_blocks]


def done_blocks() -> int | None:
    """How many blocks of the detect run in progress a rerun will not compute again; None before any."""
    if not _resume_points:
        return None
    try:
        return _resume_points[0]()
    except Exception:  # noqa: BLE001 - a store half made when the signal came: nothing to resume from
        return 0


def resume_hint(command: str, rerun: str = RERUN_COMMAND) -> str:
    """What the user can do after ``command`` was interrupted, from what this process has done;
    ``rerun`` says how to start it again (the same command line, or the same deployment run)."""
    done = done_blocks()
    blocks = f"from {done} done block{'s' if done != 1 else ''}" if done else None
    if command == "detect":
        return f"{rerun} to resume {blocks}" if blocks else f"{rerun} to start again (no block was done yet)"
    if command == "monitor":
        return (f"{rerun} to resume: the pairs already recorded are kept"
                + (f", and the pair in progress resumes {blocks}" if blocks else ""))
    if command == "retrain":
        return f"{rerun} to resume: training continues from its last checkpoint"
    if command == "train":
        return "rerun it with --resume to go on from its last checkpoint (train_state.pt in its work folder)"
    return f"{rerun} to start again"


def cancellable(command: str) -> Callable[[FlowBodyT], FlowBodyT]:
    """Make a flow body's run stop cleanly when it is cancelled or interrupted (see the module docstring).

    The body's run is noted as open while it runs (flows/runtime/flow_runs.py). On ``TerminationSignal``
    the outermost flow of the process stops the processes the run started and logs what was done and
    how to go on."""
    from prefect import get_run_logger
    from prefect.context import FlowRunContext
    from prefect.exceptions import TerminationSignal

    def decorate(body: FlowBodyT) -> FlowBodyT:
        @wraps(body)
        def run_body(*args: Any, **kwargs: Any) -> Any:
            run_id = note_open_run()
            try:
                return body(*args, **kwargs)
            except TerminationSignal as stopped:
                context = FlowRunContext.get()
                if context is not None and not context.flow_run.parent_task_run_id:  # a subflow leaves it to its parent
                    _silence_dask()  # a nanny whose worker is killed says so, and starts another
                    stop_children(spare_tracker=True)  # what a cluster's close left; this process goes on
                    get_run_logger().warning("%s: %s; %s", context.flow.name, _stopped_by(stopped.signal),
                                             resume_hint(command, RERUN_DEPLOYMENT),
                                             extra={USER_ERROR_MARK: True})  # the command's last line says it
                raise
            finally:
                note_closed_run(run_id)
        return run_body  # type: ignore[return-value]
    return decorate


def _silence_dask() -> None:
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if name == "distributed" or name.startswith("distributed."):
            if isinstance(logger, logging.Logger):
                logger.disabled = True


def _stopped_by(signum: int) -> str:
    return "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"


def interruptible(command: str, run: Callable[[], ResultT]) -> ResultT:
    """``run()``, stopped cleanly by SIGINT or SIGTERM (see the module docstring); returns its result
    or raises its exception. Outside the main thread signals cannot be caught, so ``run`` just runs."""
    if threading.current_thread() is not threading.main_thread():
        return run()
    outcome: dict[str, object] = {}

    def target() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # inherited by its threads and processes
        try:
            outcome["result"] = run()
        except BaseException as err:  # noqa: BLE001 - re-raised in the main thread
            outcome["error"] = err

    def on_signal(signum: int, frame) -> NoReturn:
        stop(command, signum)

    worker = threading.Thread(target=target, name=f"dsqnet-{command}", daemon=True)
    # A signal ignored at the start stays ignored: a command started in the background of a script
    # (`dsqnet detect ... &`) or under nohup was asked not to hear Ctrl-C, as Python itself honours.
    previous = {signum: signal.signal(signum, on_signal) for signum in SIGNALS
                if signal.getsignal(signum) is not signal.SIG_IGN}
    try:
        worker.start()
        while worker.is_alive():
            worker.join(0.5)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["result"]  # type: ignore[return-value]


def stop(command: str, signum: int) -> NoReturn:
    """End this process now: silence it, stop the processes it started, say how to go on, exit 128 + ``signum``."""
    for other in SIGNALS:  # a second Ctrl-C while stopping changes nothing
        signal.signal(other, signal.SIG_IGN)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    logging.disable(logging.CRITICAL)
    terminal = os.dup(2)
    quiet = os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 1)  # what the run's threads still print while they are stopped goes nowhere
    os.dup2(quiet, 2)
    said = f"{_stopped_by(signum)}; {resume_hint(command)}"
    cancel_open_runs(said)  # before the temporary API server, one of the children, goes
    stop_children()
    line = f"dsqnet {command}: {said}\n"
    if progress_bar_open():
        line = "\n" + line  # below the bar, not on its line
    os.write(terminal, line.encode())
    os._exit(128 + signum)


def stop_children(deadline_s: float = 3.0, spare_tracker: bool = False) -> None:
    """Kill every process this one started, and theirs, until none is left (a Dask nanny still
    running in this process replaces a worker that dies).

    SIGKILL, not SIGTERM: a Dask worker asked to stop prints warnings about the tasks it cancels
    onto the terminal it shares, and nothing the run writes needs an orderly end (see above).
    ``spare_tracker`` leaves multiprocessing's resource tracker, for a process that goes on: its
    next use would start another, which prints a traceback for each resource it never saw.
    """
    me = psutil.Process()
    spared = {_resource_tracker_pid()} if spare_tracker else set()
    deadline = time.monotonic() + deadline_s
    while (children := [c for c in _children(me) if c.pid not in spared]) and time.monotonic() < deadline:
        for child in children:
            try:
                child.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(children, timeout=0.5)


def _resource_tracker_pid() -> int | None:
    from multiprocessing import resource_tracker

    return getattr(resource_tracker._resource_tracker, "_pid", None)


def _children(process: psutil.Process) -> list[psutil.Process]:
    try:
        children = process.children(recursive=True)
    except psutil.Error:
        return []
    alive = []
    for child in children:
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                alive.append(child)
        except psutil.Error:
            pass
    return alive
