"""``dsqnet demo-data`` and ``dsqnet scenes``: the embedded default to scenes.zarr from the command line."""

from __future__ import annotations

import json

import numpy as np

from catalog import open_scenes
from catalog.demo import build_demo
from flows.cli.main import main


def test_scenes_from_the_demo_catalog(tmp_path, capsys):
    demo = build_demo(tmp_path / "demo", seed=1, size_px=800)
    out = tmp_path / "scenes.zarr"
    args = ["scenes", "--catalog", str(demo.catalog), "--regions", str(demo.regions), "--region", demo.region_name,
            "--before", demo.dates[0], "--after", demo.dates[-1], "--out", str(out), "--chunk", "256"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["before"]["scenes"][0]["id"].endswith(demo.dates[0])
    assert summary["after"]["scenes"][0]["id"].endswith(demo.dates[-1])
    assert summary["grid"]["crs"] == "EPSG:32633" and summary["grid"]["resolution"] == 0.5
    ds = open_scenes(out)
    assert ds["image"].shape[:2] == (2, 3) and bool(ds["valid"].all())
    assert np.percentile(ds["image"].values, 99) > 100  # real imagery, not an empty store
    assert main(args) == 0 and json.loads(capsys.readouterr().out)["reused"] is True


def test_scenes_with_reversed_dates_fails_clearly(tmp_path, capsys):
    assert main(["scenes", "--catalog", str(tmp_path), "--region", "17.9,48.4,18.0,48.5", "--before", "2023-01-01",
                 "--after", "2021-01-01", "--out", str(tmp_path / "s.zarr")]) == 1
    assert "dates are reversed" in capsys.readouterr().err
