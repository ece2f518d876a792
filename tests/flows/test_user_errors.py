"""What a user sees when a command fails for a reason they can fix: one line, no traceback.

Each case runs the real command line (``flows.cli.main.main``) in this process on small real inputs
and reads what reached the terminal's file descriptors (``capfd``: Prefect's console handler and
the libraries write there, not only to ``sys.stderr``). Prefect logs at INFO as it does for a user,
not at the WARNING the other flow tests use. A real bug, for contrast, keeps its traceback.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

import pytest
import rasterio
from prefect import flow, task

from catalog.errors import CatalogError
from flows.cli.main import main
from tests.flows.flow_helpers import FAST, hole_catalog, tiny_model_file

DATES = {"before": "2021-06-10", "after": "2023-06-12"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user-errors")
    catalog, region = hole_catalog(folder / "scenes")
    return folder, catalog, region, tiny_model_file(folder / "tiny.safetensors")


@pytest.fixture
def prefect_as_for_a_user(prefect_api):
    """Prefect as a user's terminal has it: its loggers at INFO, their default (the flow tests' conftest
    sets WARNING), and its console handler writing to file descriptor 2, where ``capfd`` reads (it was
    made while pytest held sys.stderr, and would write past ``capfd`` into pytest's own capture)."""
    import prefect  # noqa: F401  (sets up Prefect's logging)

    logger = logging.getLogger("prefect")
    level = logger.level
    logger.setLevel(logging.INFO)
    consoles = [h for h in logging.getLogger().handlers if type(h).__name__ == "PrefectConsoleHandler"]
    assert consoles, "Prefect's console handler is where its logs reach the terminal"
    streams = [(h.stream, h.console.file) for h in consoles]
    for handler in consoles:
        handler.stream = handler.console.file = sys.__stderr__
    yield
    for handler, (stream, file) in zip(consoles, streams):
        handler.stream, handler.console.file = stream, file
    logger.setLevel(level)


def detect_args(inputs, out: Path, catalog: Path | None = None, **overrides) -> list[str]:
    _, default_catalog, region, model = inputs
    params = {"region": region, **DATES, "catalog": catalog or default_catalog, "model": model, "out": out,
              "run-name": "spot", "block-size": 512, "workers": 1, **FAST, **overrides}
    return ["detect", *(arg for k, v in params.items() if v is not None for arg in (f"--{k.replace('_', '-')}", str(v)))]


def broken_copy(tmp_path: Path, item: str = "after") -> tuple[Path, Path, Path]:
    """A fresh copy of the test catalog, to break: (catalog.json, the Item's JSON, its COG)."""
    catalog, _ = hole_catalog(tmp_path / "scenes")
    return catalog, next(catalog.parent.rglob(f"{item}.json")), tmp_path / "scenes" / f"{item}.tif"


def edit_item(path: Path, **properties) -> None:
    data = json.loads(path.read_text())
    for key, value in properties.items():
        if value is None:
            data["properties"].pop(key, None)
        else:
            data["properties"][key] = value
    path.write_text(json.dumps(data))


def ran(capfd, argv: list[str]) -> tuple[int, str, str]:
    capfd.readouterr()  # only what the command prints
    code = main(argv)
    out, err = capfd.readouterr()
    return code, out, err


def one_error_line(err: str, command: str = "detect") -> str:
    """The message of the single line a failed command leaves on stderr (and that it is the only one)."""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) >= 1 and lines[-1].startswith(f"dsqnet {command}: error: "), err
    assert [line for line in lines if line.strip()] == lines[-1:] or lines[0].startswith("dsqnet"), err
    return err.split(f"dsqnet {command}: error: ", 1)[1].rstrip("\n")


# --------------------------------------------------------------------------------------------------
# Before Prefect starts: parameters, region, catalog, model, output folder


def test_bad_parameters_name_each_one_and_the_fix(capfd, tmp_path):
    code, out, err = ran(capfd, ["detect", "--region", "16.3,48.1,16.5,48.3", "--before", "2023-13-01", "--after",
                                 "2021-01-01", "--block-size", "600", "--catalog", "c.json", "--out", str(tmp_path)])
    assert code == 1 and out == ""
    assert err == ("dsqnet detect: error: invalid detect parameters, 2 problems: "
                   "(1) before: '2023-13-01' is not a date; write it as YYYY-MM-DD, e.g. 2023-06-21; "
                   "(2) block_size: must be a multiple of 512 (blocks write whole chunks of change_prob.zarr), e.g. 512\n")


@pytest.mark.parametrize("name", ["../../elsewhere", "nested/run", ".cache"])
def test_a_run_name_that_would_leave_out_or_enter_the_caches_is_refused(capfd, tmp_path, name):
    """Before, ``--run-name ../../x`` published the run two folders above --out."""
    code, out, err = ran(capfd, ["detect", "--run-name", name, "--out", str(tmp_path / "runs")])
    assert code == 1 and out == ""
    assert err == (f"dsqnet detect: error: invalid detect parameter run_name: {name!r} is not a plain folder name; "
                   "the run folder goes inside --out, so name it without '/' or '\\' and not starting with '.', "
                   "e.g. 'bratislava-2023'\n")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "elsewhere").exists()


def test_a_bad_region_is_named(capfd, inputs, tmp_path):
    code, _, err = ran(capfd, detect_args(inputs, tmp_path / "runs", region="16.5,48.1,16.3,48.3"))
    assert code == 1
    assert one_error_line(err) == ("bbox '16.5,48.1,16.3,48.3' is not minlon,minlat,maxlon,maxlat in degrees with "
                                   "min < max (longitude -180..180, latitude -90..90)")


def test_a_truth_that_cannot_be_read_is_named_before_any_work(capfd, inputs, tmp_path):
    """It was read only after the blocks, and failed the run at its end in pyarrow's words ("Could not
    open Parquet input source ... smaller than the minimum file footer"), naming no parameter."""
    fix = "give GeoParquet polygons (.parquet) or a GeoTIFF of the true change"
    bad = tmp_path / "truth.parquet"
    bad.write_bytes(b"PAR")
    code, _, err = ran(capfd, detect_args(inputs, tmp_path / "runs", truth=bad))
    assert code == 1
    message = one_error_line(err)
    assert message.startswith(f"truth: {bad} cannot be read as GeoParquet (") and message.endswith(f"); {fix}")
    raster = tmp_path / "truth.tif"
    raster.write_text("not a raster")
    code, _, err = ran(capfd, detect_args(inputs, tmp_path / "runs", truth=raster))
    assert code == 1 and one_error_line(err).startswith(f"truth: {raster} cannot be read as a raster (")
    assert not (tmp_path / "runs").exists()


def test_a_truth_of_another_place_is_refused_before_the_blocks(capfd, inputs, tmp_path):
    """It scored "F1 nan" at the end of the whole run."""
    import geopandas as gpd
    from shapely.geometry import box

    elsewhere = tmp_path / "truth.parquet"
    gpd.GeoDataFrame(geometry=[box(0.0, 0.0, 0.01, 0.01)], crs="EPSG:4326").to_parquet(elsewhere)
    code, out, err = ran(capfd, detect_args(inputs, tmp_path / "runs", truth=elsewhere))
    assert code == 1
    message = one_error_line(err)
    assert message.startswith(f"truth: {elsewhere} lies wholly outside the run's grid (its bounds ")
    assert message.endswith("), so no pixel of it could be scored; give the truth of this region and dates")
    assert "blocks of" not in out + err and not (tmp_path / "runs" / "spot").exists()


def test_a_missing_catalog_is_named(capfd, inputs, tmp_path):
    code, _, err = ran(capfd, detect_args(inputs, tmp_path / "runs", catalog=tmp_path / "nope" / "catalog.json"))
    assert code == 1
    assert one_error_line(err) == (f"catalog {tmp_path / 'nope' / 'catalog.json'} does not exist (expected a "
                                   "catalog.json, collection.json, an ItemCollection .geojson/.json file, or a STAC "
                                   "API URL)")
    assert not (tmp_path / "runs" / ".cache").exists()


def test_a_file_that_is_not_a_model_is_refused_before_prefect_starts(capfd, inputs, tmp_path):
    model = tmp_path / "model.safetensors"
    model.write_text("not a model")
    code, _, err = ran(capfd, detect_args(inputs, tmp_path / "runs", model=model))
    assert code == 1
    assert one_error_line(err) == (
        f"{model} is not a usable DSQNet model: {model} is not a safetensors file (Error while deserializing header: "
        "header too large); DSQNet checkpoints are .safetensors")


def test_an_output_folder_that_cannot_be_written_is_named(capfd, inputs, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, _, err = ran(capfd, detect_args(inputs, blocker / "runs"))
    assert code == 1
    assert one_error_line(err) == (f"cannot write to {blocker / 'runs'} ({blocker} is a file, not a folder); choose a "
                                   "writable folder with --out (parameter 'out')")


# --------------------------------------------------------------------------------------------------
# Inside the flow: broken assets and Items, logged by Prefect in one line


def test_a_truncated_cog_names_the_asset_and_the_item(capfd, prefect_as_for_a_user, inputs, tmp_path):
    catalog, _, cog = broken_copy(tmp_path)
    cog.write_bytes(cog.read_bytes()[: cog.stat().st_size // 2])
    code, out, err = ran(capfd, detect_args(inputs, tmp_path / "runs", catalog=catalog))
    assert code == 1 and out == ""
    message = one_error_line(err)
    assert err == f"dsqnet detect: error: {message}\n"  # nothing else: Prefect's report of it is left to the UI
    assert re.fullmatch(rf"asset 'visual' of Item 'after' \({re.escape(str(cog))}\) cannot be read: .*; it is "
                        r"truncated \(the file ends before its data does\)\. Replace the file, or remove the Item "
                        rf"from the catalog\. Nothing was written to .*scenes\.zarr\.", message), message


def test_a_missing_cog_is_said_in_one_line_alone(capfd, prefect_as_for_a_user, inputs, tmp_path):
    """The line alone. (Once, a warning of zarr's about the store the failed load was removing came
    first; it depends on timing, and pytest's own capture of warnings hides it here, so
    flows/cli/console.py's filter for it is not what this checks.)"""
    catalog, _, cog = broken_copy(tmp_path)
    cog.unlink()
    code, out, err = ran(capfd, detect_args(inputs, tmp_path / "runs", catalog=catalog))
    assert code == 1 and out == ""
    assert err == f"dsqnet detect: error: {one_error_line(err)}\n" and "No such file or directory" in err


def test_prefect_logs_a_user_error_in_one_line_and_marks_the_runs_failed(capfd, prefect_as_for_a_user, inputs,
                                                                          tmp_path):
    catalog, item_json, _ = broken_copy(tmp_path)
    edit_item(item_json, **{"proj:code": "EPSG:99999"})
    code, _, err = ran(capfd, ["--verbose", *detect_args(inputs, tmp_path / "runs", catalog=catalog)])
    expected = ("Item 'after' gives proj:code 'EPSG:99999', which is not a CRS (proj_create: crs not found: "
                "EPSG:99999); correct it (e.g. proj:code 'EPSG:32633'), or remove it so that the CRS is read from the "
                "file")
    assert code == 1 and "Traceback" not in err
    assert err.endswith(f"dsqnet detect: error: {expected}\n")
    assert f"Task run failed with exception: CatalogError: {expected}\n" in err
    assert f"Finished in state Failed(\"Task run encountered an exception CatalogError: {expected}\")" in err
    assert f"Flow run encountered an exception: CatalogError: {expected}" in err


def test_an_asset_without_a_crs_is_named(capfd, prefect_as_for_a_user, inputs, tmp_path):
    catalog, item_json, cog = broken_copy(tmp_path)
    with rasterio.open(cog) as src:
        pixels, profile = src.read(), src.profile
    profile.pop("crs"), profile.pop("transform")
    with rasterio.open(cog, "w", **profile) as dst:  # NotGeoreferencedWarning here is the test's own
        dst.write(pixels)
    edit_item(item_json, **{"proj:code": None, "proj:shape": None, "proj:transform": None})
    code, _, err = ran(capfd, detect_args(inputs, tmp_path / "runs", catalog=catalog))
    assert code == 1
    assert one_error_line(err) == (
        f"asset 'visual' of Item 'after' ({cog}) has no CRS: neither the file nor the Item says where it lies. Give "
        "the Item a proj:code (e.g. 'EPSG:32633'), or write the CRS into the file (gdal_edit.py -a_srs EPSG:32633 "
        f"FILE). Nothing was written to {tmp_path / 'runs' / '.cache' / 'spot' / 'scenes.zarr'}.")


def test_an_item_without_a_datetime_is_named(capfd, prefect_as_for_a_user, inputs, tmp_path):
    catalog, item_json, _ = broken_copy(tmp_path)
    edit_item(item_json, datetime=None)
    code, _, err = ran(capfd, detect_args(inputs, tmp_path / "runs", catalog=catalog))
    assert code == 1
    assert one_error_line(err) == (
        f"Item 'after' ({item_json}) has no datetime, nor a start_datetime and an "
        "end_datetime; give it a datetime (e.g. \"datetime\": \"2023-06-21T10:30:00Z\"), or a start_datetime and an "
        "end_datetime")


def test_a_load_that_fails_under_the_planning_is_said_in_one_line(capfd, prefect_as_for_a_user, inputs, tmp_path,
                                                                   monkeypatch):
    """The blocks are planned once the store's grid is on disk, while the load goes on. A load that
    failed just then removed the store under the planning task, whose KeyError Prefect logged with its
    traceback before the run said the load's one line (seen once in three runs of this file)."""
    import shutil
    import time

    import flows.detect

    def failing_load(*args, on_written, **kwargs):
        def written(tiles):
            on_written(tiles)  # the grid is on disk: the planning starts ...
            shutil.rmtree(args[5])  # ... and the failed load removes what it wrote
            time.sleep(1.0)  # while the planning reads it
            raise CatalogError("asset 'visual' of Item 'after' cannot be read: the test's broken asset")
        return real_prepare(*args, on_written=written, **kwargs)

    real_prepare = flows.detect.prepare_chosen
    monkeypatch.setattr(flows.detect, "prepare_chosen", failing_load)
    code, _, err = ran(capfd, detect_args(inputs, tmp_path / "runs"))
    assert code == 1
    assert one_error_line(err) == "asset 'visual' of Item 'after' cannot be read: the test's broken asset"


# --------------------------------------------------------------------------------------------------
# A bug is not a user error


@task(name="buggy-step")
def _buggy_step(kind: str) -> None:
    if kind == "user":
        raise CatalogError("region x is not a region; give a bbox")
    {}["a key that is not there"]


@flow(name="buggy-flow")
def _buggy_flow(kind: str) -> None:
    _buggy_step(kind)


def test_a_real_bug_keeps_its_traceback_and_a_user_error_does_not(capfd, prefect_as_for_a_user):
    capfd.readouterr()
    with pytest.raises(KeyError):
        _buggy_flow("bug")
    bug = capfd.readouterr().err
    assert "Task run failed with exception: KeyError" in bug and "Traceback (most recent call last)" in bug
    with pytest.raises(CatalogError):
        _buggy_flow("user")
    user = capfd.readouterr().err
    assert "Task run failed with exception: CatalogError: region x is not a region; give a bbox" in user
    assert "Traceback" not in user


# --------------------------------------------------------------------------------------------------
# The other commands: one line each


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    import torch

    folder = tmp_path_factory.mktemp("bad-files")
    (folder / "text.safetensors").write_text("not a model")
    torch.save({"weight": torch.zeros(3)}, folder / "whole.pth")
    whole = (folder / "whole.pth").read_bytes()
    (folder / "truncated.pth").write_bytes(whole[: len(whole) // 2])
    (folder / "garbage.pth").write_bytes(b"garbage")
    return folder


@pytest.mark.parametrize("argv, expected", [
    (["convert-opencd", "{f}/truncated.pth", "--out", "{f}/x.safetensors"],
     "{f}/truncated.pth cannot be read as a PyTorch checkpoint (PytorchStreamReader failed reading zip archive: failed "
     "finding central directory); the file is truncated or corrupt: download or copy it again"),
    (["convert-opencd", "{f}/garbage.pth", "--out", "{f}/x.safetensors"],
     "{f}/garbage.pth is not a PyTorch checkpoint (neither the zip archive torch.save writes nor a pickle); give the "
     "authors' .pth file, or a .safetensors file"),
    (["evaluate", "--model", "{f}/text.safetensors", "--data", "{f}/no-data"], "dataset folder {f}/no-data does not exist"),
    (["evaluate-model", "--data", "{f}/no-data", "--out", "{f}/runs"],
     "data: {f}/no-data does not exist or is not a folder; give a labeled benchmark folder"),
    (["retrain", "--name", "m", "--data", "{f}/no-data", "--registry", "{f}/registry", "--out", "{f}/runs"],
     "data: {f}/no-data does not exist or is not a folder; give a labeled benchmark folder"),
    (["models", "show", "levir@3", "--registry", "{f}/registry"],
     "no model named 'levir' in the registry at {f}/registry (the registry is empty). Register one with `dsqnet models "
     "register FILE --name levir`, or point --registry (or DSQNET_REGISTRY) at the registry that holds it"),
    (["monitor", "--regions", "{f}/regions.yaml", "--catalog", "{f}/catalog.json", "--out", "{f}/runs"],
     "regions file {f}/regions.yaml does not exist; monitor needs a regions file of name: {{geometry, watch_zones, "
     "monitor}}"),
    (["scenes", "--region", "16.3,48.1,16.5,48.3", "--before", "2021-06-01", "--after", "2022-06-01", "--catalog",
      "{f}/catalog.json", "--out", "{f}/s.zarr"],
     "catalog {f}/catalog.json does not exist (expected a catalog.json, collection.json, an ItemCollection "
     ".geojson/.json file, or a STAC API URL)"),
])
def test_every_command_fails_in_one_line(capfd, bad_files, argv, expected):
    code, out, err = ran(capfd, [arg.format(f=bad_files) for arg in argv])
    assert code == 1 and out == ""
    assert err == f"dsqnet {argv[0]}: error: {expected.format(f=bad_files)}\n"


def test_predict_names_a_file_that_is_not_a_model(capfd, bad_files, tmp_path):
    from catalog.example_pair import write_example_pair

    pair = write_example_pair(tmp_path, size_px=64)
    model = bad_files / "text.safetensors"
    code, _, err = ran(capfd, ["predict", "--model", str(model), "--before", str(pair.before), "--after",
                               str(pair.after), "--out", str(tmp_path / "change.tif")])
    assert code == 1
    assert err == (f"dsqnet predict: error: {model} is not a safetensors file (Error while deserializing header: "
                   "header too large); DSQNet checkpoints are .safetensors\n")


# --------------------------------------------------------------------------------------------------
# Quiet by default


def test_a_run_shows_its_progress_and_summary_not_the_libraries_logs(capfd, prefect_as_for_a_user, inputs, tmp_path):
    code, out, err = ran(capfd, detect_args(inputs, tmp_path / "runs"))
    assert code == 0
    assert out.startswith(f"Outputs in {tmp_path / 'runs' / 'spot'}: change.tif, change_prob.tif, changes.parquet, "
                          "preview.png, run.json\n  changed: ")
    assert err.startswith("4 blocks of 512 px, 4 to compute (0 already done), ")
    bar = err.replace("\r", "\n").splitlines()
    assert any(re.fullmatch(r"blocks: 100%\|.*\| 4/4 \[\d\d:\d\d<00:00, .*block.*, \d+\.\d windows/s\]\s*", line)
               for line in bar), err
    for noise in ("INFO", "distributed", "Dask", "Finished in state", "Traceback", "Warning", "temporary server"):
        assert noise not in err
    code, _, verbose = ran(capfd, ["--verbose", *detect_args(inputs, tmp_path / "runs")])  # all blocks reused
    assert code == 0
    assert "| INFO    | Flow run" in verbose and "Finished in state Completed()" in verbose


def test_a_flow_run_as_a_deployment_runs_it_fails_on_bad_parameters_in_one_line(capfd, prefect_as_for_a_user,
                                                                                  tmp_path):
    from flows.entrypoints import detect_changes

    capfd.readouterr()
    state = detect_changes(region="16.3,48.1,16.5,48.3", before="2023-13-01", after="2024-06-01", catalog="c.json",
                           out=str(tmp_path / "runs"), return_state=True)
    err = capfd.readouterr().err
    problem = "invalid detect parameter before: '2023-13-01' is not a date; write it as YYYY-MM-DD, e.g. 2023-06-21"
    assert state.is_failed() and state.message == f"Flow run encountered an exception: ParameterError: {problem}"
    assert f"Encountered exception during execution: ParameterError: {problem}\n" in err
    assert "Traceback" not in err and not (tmp_path / "runs").exists()


class NetworkOutOfMemory:
    """A network whose batch does not fit: torch's CPU allocator refuses the 9 TiB it asks for."""

    device = __import__("torch").device("cpu")

    def predict_proba(self, before, after):
        import torch

        return torch.empty(10**13, dtype=torch.uint8)


def test_a_block_out_of_memory_names_the_settings_that_make_it_fit(capfd, prefect_as_for_a_user, inputs, tmp_path,
                                                                   monkeypatch):
    import flows.detect

    monkeypatch.setattr(flows.detect, "cached_predictor", lambda *_, **__: NetworkOutOfMemory())
    code, out, err = ran(capfd, detect_args(inputs, tmp_path / "runs"))
    assert code == 1 and "Traceback" not in err, err[-3000:]
    assert re.fullmatch(
        r"dsqnet detect: error: block-\d-\d ran out of memory on cpu \(tried to allocate 9313\.23 GiB\) with a block "
        r"of 512 px, batches of 16 windows of 128 px in fp32: lower --block-size \(parameter 'block_size', now 512\), "
        r"lower --batch-size \(parameter 'batch_size', now 16\), or close other programs", err.splitlines()[-1]), err


def test_out_of_memory_on_a_card_keeps_torchs_figures_and_not_its_allocator_advice():
    import torch

    from flows.runtime.out_of_memory import is_out_of_memory, out_of_memory

    card = torch.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.25 GiB of which 1.00 GiB "
        "is free. Including non-PyTorch memory, this process has 78.20 GiB memory in use. If reserved but unallocated "
        "memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.")
    assert is_out_of_memory(card) and not is_out_of_memory(RuntimeError("an unrelated bug"))
    assert str(out_of_memory(card, "block-0-1", "cuda:0", 16, 512, "fp32", 4096)) == (
        "block-0-1 ran out of GPU memory on cuda:0 (Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.25 "
        "GiB of which 1.00 GiB is free) with batches of 16 windows of 512 px in fp32: lower --batch-size (parameter "
        "'batch_size', now 16), use --precision bf16 or fp16 (parameter 'precision'), or free the card of other "
        "processes")
    try:
        __import__("numpy").ones(10**13, dtype="uint8")
    except MemoryError as numpy_refused:
        assert is_out_of_memory(numpy_refused)
        assert str(out_of_memory(numpy_refused, "the pair", "cpu", 4, 512, "bf16")) == (
            "the pair ran out of memory on cpu (Unable to allocate 9.09 TiB) with batches of 4 windows of 512 px in "
            "bf16: lower --batch-size (parameter 'batch_size', now 4), or close other programs")
        assert str(out_of_memory(numpy_refused, "block-0-1", "cuda:0", 4, 512, "fp32", 2048)) == (  # not the card's
            "block-0-1 ran out of host memory (Unable to allocate 9.09 TiB) with a block of 2048 px, batches of 4 "
            "windows of 512 px in fp32: lower --block-size (parameter 'block_size', now 2048), lower --batch-size "
            "(parameter 'batch_size', now 4), or close other programs")
    else:
        pytest.fail("numpy allocated 9 TiB")


def test_predict_out_of_memory_names_the_batch_size(capfd, inputs, tmp_path, monkeypatch):
    from catalog.example_pair import write_example_pair
    from dsqnet.predictor import Predictor

    def refused(*_, **__):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                           f"you tried to allocate {3 * 2**30} bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(Predictor, "predict_proba", refused)  # each batch, as the real one would fail
    pair = write_example_pair(tmp_path, size_px=64)
    code, _, err = ran(capfd, ["predict", "--model", str(inputs[3]), "--before", str(pair.before), "--after",
                               str(pair.after), "--out", str(tmp_path / "change.tif"), "--window", "64",
                               "--stride", "32", "--batch-size", "2"])
    assert code == 1
    assert err == ("dsqnet predict: error: the pair ran out of memory on cpu (tried to allocate 3.00 GiB) with batches "
                   "of 2 windows of 64 px in fp32: lower --batch-size (parameter 'batch_size', now 2), or close other "
                   "programs\n")


def test_prefects_note_about_draining_its_log_queue_does_not_follow_the_error_line(caplog):
    """At exit, Prefect's log worker said "Still processing items: 6 items remaining..." after the
    command's error line, through Python's last-resort handler."""
    import logging

    from flows.cli.console import console

    with console(False, uses_prefect=True):
        pass
    worker = logging.getLogger("APILogWorker")  # as Prefect's service names its logger
    with caplog.at_level(logging.WARNING):
        worker.warning("Still processing items: 6 items remaining...")
        worker.warning("a warning of its own")
    assert [r.getMessage() for r in caplog.records if r.name == "APILogWorker"] == ["a warning of its own"]


@pytest.mark.parametrize("option, value", [("--threshold", "nan"), ("--min-area-m2", "inf")])
def test_a_number_that_is_not_finite_is_called_so(capfd, tmp_path, option, value):
    """Before, nan was told to be "less than 1", and an infinite minimum area was taken (no polygon at all)."""
    code, _, err = ran(capfd, ["detect", option, value, "--out", str(tmp_path / "runs")])
    name = option.removeprefix("--").replace("-", "_")
    assert code == 1 and err == f"dsqnet detect: error: invalid detect parameter {name}: Input should be a finite number\n"
