"""The embedded default end to end: the demo model finds the demo town's known change."""

from __future__ import annotations

import json

from flows.detect import detect_changes
from flows.models.resolve import DEMO_MODEL, resolve_model


def test_the_demo_model_ships_small_and_records_how_it_was_made():
    record = resolve_model(None)
    assert DEMO_MODEL.stat().st_size <= 5 * 2**20
    assert record.path == str(DEMO_MODEL) and len(record.sha256) == 64


def test_the_demo_model_finds_the_known_change_of_a_demo_town(prefect_api, demo_town, tmp_path):
    demo = demo_town  # a smaller town from the same generator
    before, after = demo.dates[0], demo.dates[2]
    summary = detect_changes(region=demo.region_name, regions=str(demo.regions), catalog=str(demo.catalog),
                             before=before, after=after, truth=str(demo.truth[(before, after)][1]),
                             out=str(tmp_path / "runs"), workers=1)
    manifest = json.loads((tmp_path / "runs" / f"demo-town_{before}_{after}" / "run.json").read_text())
    assert manifest["model"]["path"] == str(DEMO_MODEL)
    assert summary["metrics"]["f1"] >= 0.7, summary["metrics"]
    assert manifest["metrics"]["pixels_scored"] == manifest["pixels"]["observed"]
