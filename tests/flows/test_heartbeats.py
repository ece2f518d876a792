"""The flows' heartbeat (flows/runtime/heartbeats.py) on Prefect's own local API."""

from __future__ import annotations

import threading

import prefect.flow_engine
from prefect import flow
from prefect.runtime import flow_run
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

import flows.detect  # noqa: F401 - importing a flow module puts the heartbeat in place
from flows.runtime import heartbeats
from tests.flows.flow_helpers import heartbeating_flow_runs


STARTED, RELEASE = threading.Event(), threading.Event()


@flow(name="beating")
def beating() -> str:
    STARTED.set()
    RELEASE.wait(60)  # until the test has seen the heartbeat's thread
    return flow_run.get_id()


def test_the_flows_beat_with_a_heartbeat_that_stops_when_the_run_does(prefect_api):
    assert prefect.flow_engine._send_heartbeats is heartbeats.send_heartbeats
    assert heartbeats.install()  # a second install changes nothing

    result: list[str] = []
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 30}):
        runner = threading.Thread(target=lambda: result.append(beating()))
        runner.start()
        try:
            assert STARTED.wait(60)
            beat = [t for t in threading.enumerate() if t.name == "flow-run-heartbeat"]
            assert len(beat) == 1 and beat[0].is_alive()  # beating while the run works
        finally:
            RELEASE.set()
            runner.join(60)
    assert result and not beat[0].is_alive()  # gone with the run, not left behind
    assert result[0] in heartbeating_flow_runs({result[0]})  # Prefect's event, read back from the API


def test_prefects_own_heartbeat_stays_where_its_engine_lacks_what_ours_uses(monkeypatch):
    monkeypatch.setattr(prefect.flow_engine, "_send_heartbeats", lambda engine, join_on_exit=True: None)
    engine = prefect.flow_engine.FlowRunEngine
    owner = next(c for c in engine.__mro__ if "_build_heartbeat_event_template" in vars(c))
    monkeypatch.delattr(owner, "_build_heartbeat_event_template")  # as if a later Prefect had renamed it
    assert not heartbeats.install()
    assert prefect.flow_engine._send_heartbeats is not heartbeats.send_heartbeats
