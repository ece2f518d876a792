"""Prefect for the flow tests: its own local API, started once per session by Prefect itself."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """The URL of a Prefect API for this session (subprocesses reach it through PREFECT_API_URL)."""
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield PREFECT_API_URL.value()


@pytest.fixture(scope="session")
def demo_town(tmp_path_factory):
    """A smaller town (1200 px) from the demo's generator, built once for every test that only reads it."""
    from catalog.demo import build_demo

    return build_demo(tmp_path_factory.mktemp("demo-town") / "demo", size_px=1200)
