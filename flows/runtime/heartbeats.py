"""A flow run's heartbeat that stops the moment the run's work is done.

Prefect beats for each flow run (zombie-run detection, docs/deployment.md) from a thread that
sleeps in one-second steps, and the run's end waits for that thread to wake and see that it should
stop: every top-level run ended 0 to 1 s after its work, half a second on average. An 8192² run
with the stand-in network took either 14.1 or 15.2 s, as the thread happened to be in its second
(bench/HISTORY.md, stop 32). Here the same thread waits on its stop event instead, so the run
ends as soon as its body returns. It beats as Prefect's does, from the engine's own event template
and emitter, as often, and stops at the same moments: when the run's state is final, or when the
run leaves the heartbeat's ``with``.

``install`` puts it in place of Prefect's where this Prefect has the parts it uses, and leaves
Prefect's alone where it does not: a newer Prefect keeps beating, only with its own end.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import threading
from collections.abc import Iterator
from typing import Any

import prefect.flow_engine as engine_module

_ENGINE_PARTS = ("heartbeat_seconds", "_build_heartbeat_event_template", "_emit_flow_run_heartbeat")


@contextlib.contextmanager
def send_heartbeats(engine: Any, join_on_exit: bool = True) -> Iterator[None]:
    """Beat for ``engine``'s flow run while inside, every ``engine.heartbeat_seconds``; the thread
    is told to stop on leaving and, unless ``join_on_exit`` is False, waited for (up to 2 s, for a
    beat in flight)."""
    seconds = engine.heartbeat_seconds  # None: heartbeats are off; else already at least Prefect's minimum
    if seconds is None:
        yield
        return
    resource, related = engine._build_heartbeat_event_template()
    stop = threading.Event()

    def beat() -> None:
        while True:
            run = engine.flow_run
            if run is not None and run.state is not None and run.state.is_final():
                return
            try:
                engine._emit_flow_run_heartbeat(resource, related)
            except Exception:  # a beat that fails is only a missed beat, as in Prefect
                engine.logger.debug("Failed to emit heartbeat", exc_info=True)
            if stop.wait(seconds):
                return

    # the caller's context, so that the thread reports to the same API (Prefect's reason, too)
    thread = threading.Thread(target=contextvars.copy_context().run, args=(beat,), daemon=True,
                              name="flow-run-heartbeat")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        if join_on_exit:
            thread.join(timeout=2)


def install() -> bool:
    """Use ``send_heartbeats`` for every flow run of this process; False where this Prefect's engine
    lacks what it needs (its own heartbeat then stays)."""
    current = getattr(engine_module, "_send_heartbeats", None)
    if current is send_heartbeats:
        return True
    engine = getattr(engine_module, "FlowRunEngine", None)
    if current is None or engine is None or not all(hasattr(engine, part) for part in _ENGINE_PARTS):
        return False
    if list(inspect.signature(current).parameters) != ["engine", "join_on_exit"]:
        return False
    engine_module._send_heartbeats = send_heartbeats
    return True
