"""Bad input to each command that is not a flow, as a new user gives it: the command ends with one
line that names the input, what is wrong with it and the fix, and writes nothing.

Each case runs the real command line in this process and reads both file descriptors (``capfd``).
"""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from flows.cli.main import main
from tests.flows.flow_helpers import hole_catalog, tiny_model_file

DATES = ["--before", "2021-06-10", "--after", "2023-06-12"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny model, a pair of GeoTIFFs, a catalog with its region, a broken YAML file and a plain file."""
    folder = tmp_path_factory.mktemp("bad-input")
    rng = np.random.default_rng(0)
    for name in ("before", "after"):
        with rasterio.open(folder / f"{name}.tif", "w", driver="GTiff", width=160, height=160, count=3,
                           dtype="uint8", crs="EPSG:32633", transform=from_origin(500_000, 5_400_000, 0.5, 0.5)) as dst:
            dst.write(rng.integers(0, 256, (3, 160, 160), dtype=np.uint8))
    catalog, region = hole_catalog(folder / "scenes")
    (folder / "broken.yaml").write_text("name: [unclosed\n")
    (folder / "a-file").write_text("not a folder")
    return {"folder": folder, "model": str(tiny_model_file(folder / "tiny.safetensors")), "catalog": str(catalog),
            "region": region, "before": str(folder / "before.tif"), "after": str(folder / "after.tif")}


def failed_with(capfd, argv: list[str], code: int = 1) -> str:
    """The one line a failed command printed (after checking that it is the only output)."""
    capfd.readouterr()
    assert main(argv) == code
    out, err = capfd.readouterr()
    assert out == "" and err.count("\n") == 1 and "Traceback" not in err, err
    return err.rstrip("\n")


def predict(inputs, out: Path, *extra: str) -> list[str]:
    return ["predict", "--model", inputs["model"], "--before", inputs["before"], "--after", inputs["after"],
            "--out", str(out), "--window", "64", "--stride", "32", *extra]


def test_predict_names_a_device_torch_does_not_know_or_this_machine_lacks(inputs, tmp_path, capfd):
    assert failed_with(capfd, predict(inputs, tmp_path / "c.tif", "--device", "tpu")) == \
        "dsqnet predict: error: device 'tpu' is not one torch knows; use 'cpu', 'cuda' or 'cuda:N'"
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    asked = f"cuda:{gpus}"  # one past the last GPU: none on a machine without them
    expected = (f"dsqnet predict: error: device '{asked}' asks for a CUDA GPU, but torch sees none on this machine; "
                "use device 'cpu' (or leave the device out to take a GPU where there is one)") if gpus == 0 else \
        f"dsqnet predict: error: device '{asked}': torch sees {gpus} CUDA GPU{'s' if gpus > 1 else ''} here " \
        f"(cuda:0{f' to cuda:{gpus - 1}' if gpus > 1 else ''})"
    assert failed_with(capfd, predict(inputs, tmp_path / "c.tif", "--device", asked)) == expected
    assert not list(tmp_path.iterdir())


def test_predict_checks_the_formats_and_folders_of_its_maps_before_inferring(inputs, tmp_path, capfd):
    assert failed_with(capfd, predict(inputs, tmp_path / "c.jpg")) == \
        f"dsqnet predict: error: --out {tmp_path / 'c.jpg'}: write the map as .tif or .tiff or .png (the suffix " \
        "picks the format)"
    assert failed_with(capfd, predict(inputs, tmp_path / "c.tif", "--probabilities", str(tmp_path / "p.png"))) == \
        f"dsqnet predict: error: --probabilities {tmp_path / 'p.png'}: write the probabilities as .tif or .tiff " \
        "(the suffix picks the format)"
    under_a_file = inputs["folder"] / "a-file" / "c.tif"
    assert failed_with(capfd, predict(inputs, under_a_file)) == \
        f"dsqnet predict: error: cannot write to {under_a_file.parent} ({under_a_file.parent} is a file, not a " \
        "folder); choose a writable folder with --out"
    assert not list(tmp_path.iterdir())


def test_counts_below_one_are_refused_by_the_option_itself(inputs, tmp_path, capfd):
    capfd.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(predict(inputs, tmp_path / "c.tif", "--batch-size", "0"))
    assert exited.value.code == 2
    assert capfd.readouterr().err == ("dsqnet predict: error: argument --batch-size: must be at least 1, got 0 "
                                      "(dsqnet predict --help lists the options)\n")  # one line: no usage block


def test_an_unknown_option_points_to_its_own_commands_help(inputs, tmp_path, capfd):
    """Before, the top-level parser told it, and pointed to `dsqnet --help`, which lists no option of the command."""
    capfd.readouterr()
    for argv, said in ((predict(inputs, tmp_path / "c.tif", "--bogus", "x"), "dsqnet predict: error: unrecognized "
                        "arguments: --bogus x (dsqnet predict --help lists the options)\n"),
                       (["models", "list", "--bogus"], "dsqnet models list: error: unrecognized arguments: --bogus "
                        "(dsqnet models list --help lists the options)\n")):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2
        assert capfd.readouterr().err == said
    assert not list(tmp_path.iterdir())


def test_broken_yaml_is_said_in_one_line_with_where_it_breaks(inputs, tmp_path, capfd):
    broken = inputs["folder"] / "broken.yaml"
    where = "line 2, column 1: expected ',' or ']', but got '<stream end>'"
    assert failed_with(capfd, ["train", "--config", str(broken)]) == \
        f"dsqnet train: error: config {broken} is not valid YAML ({where})"
    assert failed_with(capfd, ["monitor", "--regions", str(broken), "--catalog", inputs["catalog"], "--state",
                               str(tmp_path / "state"), "--out", str(tmp_path / "runs")]) == \
        f"dsqnet monitor: error: regions file {broken} is not valid YAML ({where}); monitor needs a regions file " \
        "of name: {geometry, watch_zones, monitor}"


def test_an_unknown_crs_is_named_by_scenes_and_by_detect_before_any_work(inputs, tmp_path, capfd):
    unknown = ("'EPSG:99999' is not a CRS pyproj knows (crs not found: EPSG:99999); give an EPSG code of a metric "
               "CRS such as EPSG:32633, or leave it out for the region's UTM zone")
    assert failed_with(capfd, ["scenes", "--region", inputs["region"], *DATES, "--catalog", inputs["catalog"],
                               "--out", str(tmp_path / "scenes.zarr"), "--crs", "EPSG:99999"]) == \
        f"dsqnet scenes: error: target CRS {unknown}"
    capfd.readouterr()
    assert main(["detect", "--region", inputs["region"], *DATES, "--catalog", inputs["catalog"], "--model",
                 inputs["model"], "--out", str(tmp_path / "runs"), "--crs", "EPSG:99999"]) == 1
    assert capfd.readouterr().err == f"dsqnet detect: error: invalid detect parameter crs: {unknown}\n"
    assert not list(tmp_path.iterdir())


def test_a_dask_address_where_no_scheduler_listens_is_named_before_the_flow(inputs, tmp_path, capfd):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    assert failed_with(capfd, ["detect", "--region", inputs["region"], *DATES, "--catalog", inputs["catalog"],
                               "--model", inputs["model"], "--out", str(tmp_path / "runs"), "--dask-address", address]) == \
        f"dsqnet detect: error: dask_address: no Dask scheduler answers at {address} (nothing listens there); start " \
        "the cluster (dask scheduler, then dask worker on each machine) or leave it out for a local one"


@pytest.mark.parametrize("command", [["example-pair"], ["demo-data"], ["init-model", "dsqnet_swin_mini"]])
def test_commands_that_write_files_name_an_unwritable_out(inputs, capfd, command):
    under_a_file = inputs["folder"] / "a-file" / "sub"
    out = under_a_file / "m.safetensors" if command[0] == "init-model" else under_a_file
    assert failed_with(capfd, [*command, "--out", str(out)]) == \
        f"dsqnet {command[0]}: error: cannot write to {under_a_file} ({under_a_file.parent} is a file, not a " \
        "folder); choose a writable folder with --out"
