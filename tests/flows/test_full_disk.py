"""A full disk, met for real, is said as "the disk is full at <folder>: <free> left, about <need>
needed (...)"; the outputs written before stay as they were.

Disks are small tmpfs mounts (which need root: skipped with the reason where mounting is not
allowed), and a file size limit (``RLIMIT_FSIZE``, which gives ``EFBIG``) in a subprocess, which
needs no privilege.
"""

from __future__ import annotations

import errno
import hashlib
import re
import resource
import subprocess
import sys
import uuid
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely

from flows.cli.main import main
from flows.monitoring.state import RegionStore
from flows.runtime.disk_full import DiskFull, DiskFullError
from tests.flows.flow_helpers import FAST, hole_catalog, tiny_model_file

DSQNET = str(Path(sys.executable).parent / "dsqnet")
SIZE = r"\d+(\.\d)? (B|kB|MB|GB)"


@pytest.fixture
def small_disk(tmp_path):
    """``small_disk(size)``: a fresh tmpfs of ``size`` (e.g. ``"256k"``), unmounted afterwards."""
    mounted = []

    def mount(size: str) -> Path:
        folder = tmp_path / f"disk-{len(mounted)}"
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                              capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"a real full disk needs a tmpfs, and mounting one is not allowed here (run as root): "
                        f"{done.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> None:
    """Write until the disk is full (it may be already: then not even a new file fits)."""
    try:
        with open(folder / f"filler-{uuid.uuid4().hex[:6]}", "wb") as f:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_numpy_says_a_full_disk_without_an_errno_and_it_is_recognised(small_disk):
    disk = small_disk("64k")
    with pytest.raises(DiskFullError) as caught:
        with DiskFull(disk, 400_000).said():
            np.save(disk / "sums.npy", np.zeros(100_000, np.float32))
    assert re.fullmatch(rf"the disk is full at {disk}: {SIZE} left, about 400 kB needed \(a write stopped after "
                        rf"{SIZE} of {SIZE}\); free some space or choose another folder", str(caught.value))


def test_the_monitor_state_keeps_its_history_when_the_disk_fills(small_disk):
    store = RegionStore(small_disk("256k"), "town")
    def rows(n):
        return gpd.GeoDataFrame({"pair_key": [f"town|a|b{n}"] * n, "area_m2": np.arange(n, dtype=float)},
                                geometry=shapely.points(np.arange(n), np.arange(n)), crs="EPSG:32633")
    store.write_pair("town|a|b", rows(10))
    before = store.history_path.read_bytes()
    with pytest.raises(DiskFullError) as caught:
        store.write_pair("town|a|c", rows(200_000))
    assert re.fullmatch(rf"the disk is full at {store.folder}: {SIZE} left, about {SIZE} needed \(No space left on "
                        r"device.*\); free some space or choose another --state; the region's state and history are "
                        r"unchanged, and the next run processes this pair again", str(caught.value)), str(caught.value)
    assert store.history_path.read_bytes() == before
    assert [p.name for p in store.folder.iterdir()] == ["history.parquet"]  # no half-written file left


def test_a_detect_run_on_a_full_disk_says_so_and_leaves_the_earlier_run_folder(small_disk, prefect_api, tmp_path,
                                                                             capfd):
    catalog, region = hole_catalog(tmp_path / "scenes")
    model = tiny_model_file(tmp_path / "tiny.safetensors")
    out = small_disk("24m") / "runs"
    args = ["detect", "--region", region, "--before", "2021-06-10", "--after", "2023-06-12", "--catalog", str(catalog),
            "--model", str(model), "--out", str(out), "--run-name", "spot", "--block-size", "512", "--workers", "1",
            *(arg for k, v in FAST.items() for arg in (f"--{k.replace('_', '-')}", str(v)))]
    assert main(args) == 0
    capfd.readouterr()
    published = digest(out / "spot")
    fill(out.parent)
    assert main([*args, "--threshold", "0.3"]) == 1  # every output again, for another threshold
    err = capfd.readouterr().err
    assert "Traceback" not in err
    message = err.removeprefix("dsqnet detect: error: ").rstrip("\n")
    assert err == f"dsqnet detect: error: {message}\n"
    assert re.fullmatch(
        rf"the disk is full at {out}: {SIZE} left, about {SIZE} needed \((No space left on device|a write stopped "
        rf"after {SIZE} of {SIZE}).*\); free some space or choose another --out\. Earlier outputs of this run folder "
        r"are untouched; a rerun resumes from the blocks already done\.", message), message
    assert digest(out / "spot") == published
    assert not list(out.glob(".spot.partial-*"))


def test_a_file_size_limit_is_said_like_a_full_disk_by_the_real_command(tmp_path):
    model = tiny_model_file(tmp_path / "tiny.safetensors")
    registry = tmp_path / "registry"
    limit = model.stat().st_size // 4

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = subprocess.run([DSQNET, "models", "register", str(model), "--name", "tiny", "--registry", str(registry)],
                          capture_output=True, text=True, preexec_fn=limited, timeout=300)
    assert done.returncode == 1 and done.stdout == ""
    assert "Traceback" not in done.stderr
    assert re.fullmatch(rf"dsqnet models: error: the disk is full at {registry}: {SIZE} left, about {SIZE} needed "
                        r"\(File too large: a file size limit such as `ulimit -f`\); free some space or choose another "
                        r"registry \(--registry or DSQNET_REGISTRY\); the registry is unchanged\n", done.stderr), \
        done.stderr
    assert main(["models", "list", "--registry", str(registry), "--json"]) == 0
    assert not [p for p in registry.rglob("*") if p.is_file() and p.name != ".lock"]


def write_pair(folder: Path, size: int = 300) -> tuple[Path, Path]:
    """Two random RGB GeoTIFFs of ``size`` px at 0.5 m in UTM 33N."""
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(0)
    paths = (folder / "before.tif", folder / "after.tif")
    for path in paths:
        with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8",
                           crs="EPSG:32633", transform=from_origin(500_000, 5_400_000, 0.5, 0.5)) as dst:
            dst.write(rng.integers(0, 256, (3, size, size), dtype=np.uint8))
    return paths


def test_predict_on_a_full_disk_says_so_in_one_line_and_writes_neither_map(small_disk, tmp_path, capfd):
    """The change map fits, its probabilities do not: neither takes its name, the map from before stays,
    and libtiff's own lines about the failed write stay off the terminal."""
    before, after = write_pair(tmp_path)
    model = tiny_model_file(tmp_path / "tiny.safetensors")
    disk = small_disk("64k")
    args = ["predict", "--model", str(model), "--before", str(before), "--after", str(after),
            "--out", str(disk / "change.tif"), "--window", "128", "--stride", "64"]
    assert main(args) == 0
    earlier = digest(disk)
    capfd.readouterr()
    assert main([*args, "--threshold", "0.3", "--probabilities", str(disk / "prob.tif")]) == 1
    out, err = capfd.readouterr()
    assert out == ""
    assert re.fullmatch(rf"dsqnet predict: error: the disk is full at {disk}: {SIZE} left, about {SIZE} needed "
                        r"\(No space left on device\); free some space or write prob\.tif elsewhere\n", err), err
    assert digest(disk) == earlier  # the earlier map as it was, no probabilities, no partial file


def test_scenes_on_a_full_disk_says_so_in_one_line_and_leaves_no_store(small_disk, tmp_path, capfd):
    catalog, region = hole_catalog(tmp_path / "scenes")
    disk = small_disk("64k")
    assert main(["scenes", "--region", region, "--before", "2021-06-10", "--after", "2023-06-12", "--catalog",
                 str(catalog), "--out", str(disk / "scenes.zarr")]) == 1
    out, err = capfd.readouterr()
    assert out == ""
    assert re.fullmatch(rf"dsqnet scenes: error: the disk is full at {disk}: {SIZE} left, about 2\.5 MB needed "
                        r"\(No space left on device\); free some space or choose another --out; nothing was left "
                        r"half-written\n", err), err
    assert list(disk.iterdir()) == []
