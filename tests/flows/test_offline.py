"""Prefect's settings on an offline machine: what importing ``flows`` sets, and what it leaves alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from flows.runtime.offline import OFFLINE_DEFAULTS, apply_offline_defaults

ROOT = Path(__file__).resolve().parents[2]
READ_SETTINGS = """
import json, flows.cli.main, prefect.settings
settings = prefect.settings.get_current_settings()
print(json.dumps([settings.server.ephemeral.startup_timeout_seconds, settings.server.analytics_enabled,
                  __import__("os").environ.get("DO_NOT_TRACK")]))
"""


def _settings_in_a_fresh_process(**environ: str) -> list:
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE_DEFAULTS and k != "CI"} | environ
    out = subprocess.run([sys.executable, "-c", READ_SETTINGS], env=env, cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=120).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_the_command_line_gives_prefect_a_long_start_and_no_telemetry():
    # Prefect's own defaults are 20 s and analytics on: a fresh 2-core machine timed out at 20 s
    assert _settings_in_a_fresh_process() == [120, False, "1"]


def test_what_the_user_set_wins():
    assert _settings_in_a_fresh_process(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="45",
                                        PREFECT_SERVER_ANALYTICS_ENABLED="true", DO_NOT_TRACK="0") == [45, True, "0"]


def test_only_missing_variables_are_set():
    environ = {"DO_NOT_TRACK": "0"}
    added = apply_offline_defaults(environ)
    assert "DO_NOT_TRACK" not in added and environ["DO_NOT_TRACK"] == "0"
    assert added == {k: v for k, v in OFFLINE_DEFAULTS.items() if k != "DO_NOT_TRACK"}
    assert environ == {"DO_NOT_TRACK": "0", **added}
