"""How a flow runs another flow inside its own process (``infer-blocks`` in ``detect-changes``,
``detect-changes`` in ``monitor-region``)."""

from __future__ import annotations

from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings


def as_subflow():
    """Prefect settings for a subflow: no heartbeat thread of its own.

    Prefect starts a heartbeat thread for every flow run (zombie-run detection). The thread sleeps
    in one-second steps, and the run waits for it to notice that the run has ended, which delays
    every flow run's end. A subflow lives and dies with its parent's process, whose own heartbeat
    already says whether that process is alive, so it has nothing to add.
    """
    return temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})
