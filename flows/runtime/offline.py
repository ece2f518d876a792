"""Prefect settings for a machine with no network and slow cores, set when ``flows`` is imported.

A bare ``dsqnet detect`` (no ``PREFECT_API_URL``) starts Prefect's temporary API in its own process.
On a fresh machine that start runs the database migrations, which on a slow machine take about as
long as Prefect waits by default before it gives up ("Timed out while attempting to connect to
ephemeral Prefect API server"), so the limit is raised. And the temporary server tries to
send telemetry, which logs an error where there is no network and is traffic this project
promises not to make. Each default is set only where the user has not set that variable: theirs
always wins.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

OFFLINE_DEFAULTS = {
    # a fresh database's migrations can take about Prefect's default limit (20 s) on slow cores
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    # the temporary server's telemetry, and the client's
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
}


def apply_offline_defaults(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Set each of ``OFFLINE_DEFAULTS`` that ``environ`` lacks; returns those that were set.

    Prefect reads its settings once, when it is first imported, so this must run before that.
    """
    added = {name: value for name, value in OFFLINE_DEFAULTS.items() if name not in environ}
    environ.update(added)
    return added
