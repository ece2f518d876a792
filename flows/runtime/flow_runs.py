"""The flow runs this process has open, so that a run stopped from outside Prefect is not left Running.

Ctrl-C ends a command-line run at once (flows/runtime/interrupts.py): the process exits before
Prefect's engine can report a final state, so the flow runs it had open would stay Running in the
API (the user's server, or the temporary one's database that ``prefect server start`` shows later)
until zombie detection marks them Crashed. Each flow body notes its run while it runs, and the
signal handler marks the ones still open Cancelled, within a bound: an API that does not answer
must not keep the user waiting.
"""

from __future__ import annotations

import threading
from uuid import UUID

_open_runs: list[UUID] = []  # outermost first
_lock = threading.Lock()


def note_open_run() -> UUID | None:
    """Note the flow run of the calling flow body as open; returns its id (None outside a flow run)."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return None
    with _lock:
        _open_runs.append(context.flow_run.id)
    return context.flow_run.id


def note_closed_run(run_id: UUID | None) -> None:
    """The flow body of ``run_id`` has returned or raised: Prefect reports its state from here on."""
    with _lock:
        if run_id in _open_runs:
            _open_runs.remove(run_id)


def open_runs() -> list[UUID]:
    with _lock:
        return list(_open_runs)


def cancel_open_runs(message: str, within_s: float = 1.0) -> None:
    """Mark the open flow runs Cancelled with ``message``, innermost first; gives up after ``within_s``."""
    runs = open_runs()
    if not runs:
        return

    def cancel() -> None:
        from prefect.client.orchestration import get_client
        from prefect.states import Cancelled

        try:
            with get_client(sync_client=True, httpx_settings={"timeout": within_s}) as client:
                for run_id in reversed(runs):
                    client.set_flow_run_state(run_id, Cancelled(message=message), force=True)
        except Exception:  # noqa: BLE001 - the process ends either way; zombie detection is the fallback
            pass

    worker = threading.Thread(target=cancel, name="dsqnet-cancel-runs", daemon=True)
    worker.start()
    worker.join(within_s)
