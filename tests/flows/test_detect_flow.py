"""detect-changes end to end on Prefect's own API, a real Dask LocalCluster, real zarr, COGs and GeoParquet."""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pystac
import pytest
import rasterio
import torch
import xarray as xr
from rio_cogeo.cogeo import cog_validate

from flows.detect import detect_changes
from tests.flows.flow_helpers import (
    FAST,
    heartbeating_flow_runs,
    hole_catalog,
    hole_pixels_in_region,
    tiny_model_file,
)

RUN = "spot_2021-06-10_2023-06-12"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("detect")
    catalog, region = hole_catalog(folder / "scenes")
    model = tiny_model_file(folder / "tiny.safetensors")
    return folder, catalog, region, model


def detect(inputs, out, **overrides):
    folder, catalog, region, model = inputs
    params = dict(region=region, before="2021-06-10", after="2023-06-12", catalog=str(catalog), model=str(model),
                  out=str(out), run_name="spot", block_size=512, workers=1, threshold=0.5, **FAST)
    return detect_changes(**{**params, **overrides})


@pytest.fixture(scope="module")
def first_run(prefect_api, inputs):
    out = inputs[0] / "runs"
    return out / "spot", detect(inputs, out)


def test_outputs_are_published_together_as_cogs_geoparquet_preview_and_manifest(first_run):
    folder, summary = first_run
    assert summary["run_folder"] == str(folder)
    for name in ("change.tif", "change_prob.tif", "changes.parquet", "preview.png", "run.json", "change_prob.zarr"):
        assert (folder / name).exists(), name
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".spot.")]  # no staging left behind
    for name in ("change.tif", "change_prob.tif"):
        valid, errors, _ = cog_validate(str(folder / name))
        assert valid, errors
        with rasterio.open(folder / name) as src:
            assert src.profile["tiled"] and src.overviews(1), name
            assert src.crs.to_epsg() == 32633


def test_three_states_where_one_date_did_not_observe(first_run):
    folder, _ = first_run
    with rasterio.open(folder / "change.tif") as src:
        change, nodata = src.read(1), src.nodata
    with rasterio.open(folder / "change_prob.tif") as src:
        prob = src.read(1)
    rows, cols = hole_pixels_in_region()
    assert nodata == 255
    assert (change[rows, cols] == 255).all() and np.isnan(prob[rows, cols]).all()
    assert set(np.unique(change)) <= {0, 1, 255}
    assert ((change == 255) == np.isnan(prob)).all()
    assert ((change == 1) == (prob >= 0.5)).all()
    assert (change == 255).sum() == (rows.stop - rows.start) * (cols.stop - cols.start)


def test_probability_store_tif_and_polygons_agree(first_run):
    folder, _ = first_run
    store = xr.open_zarr(str(folder / "change_prob.zarr"), decode_coords="all", consolidated=False)
    with rasterio.open(folder / "change_prob.tif") as src:
        prob, transform = src.read(1), src.transform
    assert np.array_equal(store["probability"].values, prob, equal_nan=True)
    assert store.rio.crs.to_epsg() == 32633 and store.rio.transform() == transform
    polygons = gpd.read_parquet(folder / "changes.parquet")
    assert polygons.crs.to_epsg() == 32633
    changed_area = float((prob >= 0.5).sum()) * 0.25
    assert polygons["area_m2"].sum() == pytest.approx(changed_area)
    for column in ("perimeter_m", "prob_mean", "prob_max", "observed_fraction", "before_datetime", "after_datetime",
                   "before_scenes", "after_scenes", "model_name", "model_version", "model_sha256", "run_id"):
        assert column in polygons, column
    if len(polygons):
        assert (polygons["prob_mean"] >= 0.5).all() and (polygons["prob_max"] >= polygons["prob_mean"]).all()
        assert set(polygons["before_scenes"]) == {"before"} and set(polygons["after_scenes"]) == {"after"}


def test_manifest_records_inputs_scenes_model_versions_and_a_stac_item(first_run, inputs):
    folder, _ = first_run
    manifest = json.loads((folder / "run.json").read_text())
    assert manifest["scenes"]["before_ids"] == ["before"] and manifest["scenes"]["after_ids"] == ["after"]
    assert manifest["scenes"]["before"]["scenes"][0]["reason"]
    assert manifest["grid"]["crs"] == "EPSG:32633" and manifest["grid"]["shape"] == [561, 561]
    assert manifest["model"]["sha256"] and manifest["model"]["name"] == "dsqnet_swin_mini"
    assert manifest["blocks"]["total"] == 4 and manifest["blocks"]["computed"] == 4
    # the network had this machine's cores (a CPU) or its GPU: outputs after the blocks, or while they run
    assert manifest["blocks"]["outputs_made_after_inference"] == (0 if torch.cuda.is_available() else 4)
    assert set(manifest["outputs_finished_after_s"]) == {"mosaic", "vectorise", "preview"}
    assert not list((folder.parent / ".cache").rglob("change_prob_outputs/*/*.json"))  # cleared once published
    reports = manifest["blocks"]["reports"]
    # a single local worker runs in the flow's own process
    assert all(r["worker"].startswith("inproc://") for r in reports)
    assert {r["device"] for r in reports} == ({"cuda:0"} if torch.cuda.is_available() else {"cpu"})
    rows, cols = hole_pixels_in_region()
    assert manifest["pixels"]["total"] == 561 * 561  # the region's bounds snapped outwards to whole pixels
    assert manifest["pixels"]["observed"] == 561 * 561 - (rows.stop - rows.start) * (cols.stop - cols.start)
    assert sum(r["observed_pixels"] for r in reports) == manifest["pixels"]["observed"]  # each block its own
    assert set(manifest["timings"]) >= {"choose scenes", "load scenes", "infer blocks", "mosaic, vectorise, preview"}
    peaks = list(manifest["peak_rss_gb"].values())  # this process's peak as each step ended: it only grows
    assert list(manifest["peak_rss_gb"]) == list(manifest["timings"]) and 0 < peaks[0] and peaks == sorted(peaks)
    cpu = manifest["cpu_seconds"]  # each step's CPU seconds: this process's threads, its children that ended
    assert list(cpu) == list(manifest["timings"]) and all(v["process"] >= 0 <= v["children"] for v in cpu.values())
    assert cpu["infer blocks"]["process"] > 0  # the network ran on this process's (worker's) threads
    assert manifest["versions"]["torch"] and manifest["versions"]["prefect"]
    item = pystac.Item.from_dict(manifest["stac_item"])
    assert set(item.assets) == {"change", "change_prob", "changes", "preview", "change_prob_zarr"}
    assert item.assets["change"].href == "./change.tif"
    assert item.properties["proj:code"] == "EPSG:32633"


def test_prefect_artifacts_summarise_the_run(first_run, prefect_api):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        for key in ("detect-summary", "largest-changes", "detect-progress"):
            found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
            assert found, key
        summary = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["detect-summary"])))
        assert "km²" in summary[0].data and "polygons" in summary[0].data
        progress = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["detect-progress"])))
        assert progress[0].data == 100.0


def test_the_flow_beats_for_its_subflow_which_sends_no_heartbeat_of_its_own(first_run, prefect_api):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    detect_run = json.loads((first_run[0] / "run.json").read_text())["flow_run_id"]
    with get_client(sync_client=True) as client:
        subflows = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[detect_run])))
        assert [client.read_flow(run.flow_id).name for run in subflows] == ["infer-blocks"]
    beating = heartbeating_flow_runs({detect_run})
    assert detect_run in beating
    assert str(subflows[0].id) not in beating


def test_what_the_imports_made_is_left_out_of_the_collectors_passes(first_run):
    """Frozen at the first run's start (flows/runtime/collector.py): torch, Prefect and Dask alone
    hold hundreds of thousands of objects that every full pass would walk again."""
    assert gc.get_freeze_count() > 100_000


def test_two_workers_and_a_rerun_give_the_same_map(first_run, inputs):
    folder, _ = first_run
    with rasterio.open(folder / "change_prob.tif") as src:
        reference = src.read(1)
    out = inputs[0] / "runs-2"
    summary = detect(inputs, out, workers=2)
    with rasterio.open(out / "spot" / "change_prob.tif") as src:
        assert np.nanmax(np.abs(src.read(1) - reference)) < 1e-5
    again = detect(inputs, out, workers=2)  # same inputs: every block is already done
    manifest = json.loads((out / "spot" / "run.json").read_text())
    assert manifest["blocks"]["computed"] == 0 and manifest["blocks"]["reused"] == 4
    assert again["changed_km2"] == summary["changed_km2"]


def test_blocks_ready_at_once_run_in_the_plans_order(first_run, inputs, tmp_path, monkeypatch):
    """Row by row, left to right, as the plan lists them: a block is stitched (and its outputs made)
    once the row below it is in, so a run that took a later row first left more of that work for
    after its last block. The first run's scenes are reused, so every block is ready at once, and
    the worker of a one-GPU machine takes two at a time: without priorities Dask ran the second
    row's blocks right to left."""
    import shutil

    from flows.workers import cluster as workers

    shutil.copytree(inputs[0] / "runs" / ".cache" / "spot" / "scenes.zarr", tmp_path / ".cache" / "spot" / "scenes.zarr")
    monkeypatch.setattr(workers, "local_gpu_count", lambda: 1)
    detect(inputs, tmp_path)
    manifest = json.loads((tmp_path / "spot" / "run.json").read_text())
    assert manifest["scenes"]["reused"]
    plan = [r["block"] for r in manifest["blocks"]["reports"]]  # listed in the plan's order
    started = [r["block"] for r in sorted(manifest["blocks"]["reports"], key=lambda r: r["started"])]
    assert plan == ["block-0-0", "block-0-1", "block-1-0", "block-1-1"]
    at_once = workers.BLOCKS_PER_GPU  # the first ones start together, in either order
    assert set(started[:at_once]) == set(plan[:at_once]) and started[at_once:] == plan[at_once:]


def test_two_blocks_at_once_as_on_a_one_gpu_machine_give_the_same_map(first_run, inputs, tmp_path, monkeypatch):
    """The local cluster of a one-GPU machine (one in-process worker taking two blocks at once),
    played on whatever device this machine has: the blocks that share it give the map of one at a time."""
    from flows.workers import cluster as workers

    folder, _ = first_run
    with rasterio.open(folder / "change_prob.tif") as src:
        reference = src.read(1)
    monkeypatch.setattr(workers, "local_gpu_count", lambda: 1)
    detect(inputs, tmp_path)
    with rasterio.open(tmp_path / "spot" / "change_prob.tif") as src:
        assert np.nanmax(np.abs(src.read(1) - reference)) < 1e-5
    manifest = json.loads((tmp_path / "spot" / "run.json").read_text())
    reports = manifest["blocks"]["reports"]
    assert len(reports) == 4 and all(r["worker"].startswith("inproc://") for r in reports)
    assert manifest["blocks"]["outputs_made_after_inference"] == 0  # made by child processes as blocks were stitched
    with rasterio.open(folder / "change.tif") as one, rasterio.open(tmp_path / "spot" / "change.tif") as other:
        clear = np.abs(reference - 0.5) > 1e-4  # the maps agree within 1e-5, so only the threshold could split them
        assert np.array_equal(one.read(1)[clear], other.read(1)[clear])


def test_an_existing_cluster_is_used_and_gpu_workers_get_every_block(prefect_api, inputs, tmp_path, monkeypatch):
    """A cluster of one plain worker and one started as the README says for GPU hosts
    (``dask worker ADDRESS --resources GPU=1``): every block goes to the GPU worker."""
    from distributed import Client, LocalCluster

    monkeypatch.setenv("PREFECT_API_URL", prefect_api)  # workers report to the test's API
    dask_cli = str(Path(sys.executable).parent / "dask")
    with LocalCluster(n_workers=1, processes=True, threads_per_worker=1, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        gpu_worker = subprocess.Popen([dask_cli, "worker", cluster.scheduler_address, "--nthreads", "1",
                                       "--resources", "GPU=1", "--no-dashboard"], start_new_session=True,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            client.wait_for_workers(2, timeout=120)
            gpu = {a for a, w in client.scheduler_info()["workers"].items() if w.get("resources", {}).get("GPU")}
            assert len(gpu) == 1
            detect(inputs, tmp_path, dask_address=cluster.scheduler_address)
        finally:
            os.killpg(gpu_worker.pid, signal.SIGTERM)
            gpu_worker.wait(timeout=60)
    manifest = json.loads((tmp_path / "spot" / "run.json").read_text())
    assert {r["worker"] for r in manifest["blocks"]["reports"]} == gpu
    assert manifest["blocks"]["outputs_made_after_inference"] == 0  # made in threads while the cluster ran blocks
