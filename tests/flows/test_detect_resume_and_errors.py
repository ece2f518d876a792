"""A run killed midway resumes where it stopped; bad input fails clearly and loses nothing."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from safetensors.torch import save_file

from flows.cli.main import main
from tests.flows.flow_helpers import FAST, cli_env, hole_catalog, tiny_model_file

DSQNET = str(Path(sys.executable).parent / "dsqnet")
SLOW = {**FAST, "stride": 32}  # four times the windows: blocks take seconds, long enough to be killed


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resume")
    catalog, region = hole_catalog(folder / "scenes")
    return folder, catalog, region, tiny_model_file(folder / "tiny.safetensors")


def cli_args(inputs, out: Path, **overrides) -> list[str]:
    _, catalog, region, model = inputs
    params = {"region": region, "before": "2021-06-10", "after": "2023-06-12", "catalog": catalog, "model": model,
              "out": out, "run-name": "spot", "block-size": 512, "workers": 1, **SLOW, **overrides}
    return [arg for k, v in params.items() for arg in (f"--{k.replace('_', '-')}", str(v))]


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_killed_run_resumes_with_only_the_missing_blocks_and_the_same_outputs(prefect_api, inputs, tmp_path):
    out = tmp_path / "runs"
    sums = out / ".cache" / "spot" / "change_prob_window_sums"  # one file per inferred block

    def blocks_inferred() -> int:
        return len(list(sums.glob("block-*.npy")))

    run = subprocess.Popen([DSQNET, "detect", *cli_args(inputs, out)], env=cli_env(prefect_api),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and run.poll() is None:
            if blocks_inferred() >= 1:
                break
            time.sleep(0.1)
    finally:
        os.killpg(run.pid, signal.SIGKILL)  # the flow process and its Dask workers, mid-inference
        run.wait()
    done_at_kill = blocks_inferred()
    assert 1 <= done_at_kill < 4, "the run must be killed with some, not all, blocks inferred"
    assert not (out / "spot").exists()  # nothing published by a killed run

    assert main(["detect", *cli_args(inputs, out)]) == 0
    manifest = json.loads((out / "spot" / "run.json").read_text())
    assert manifest["blocks"]["computed"] == 4 - done_at_kill
    assert manifest["blocks"]["reused"] == done_at_kill

    reference = tmp_path / "uninterrupted"
    assert main(["detect", *cli_args(inputs, reference)]) == 0
    for name in ("change.tif", "change_prob.tif"):
        with rasterio.open(out / "spot" / name) as resumed, rasterio.open(reference / "spot" / name) as whole:
            assert np.array_equal(resumed.read(1), whole.read(1), equal_nan=True), name


@pytest.mark.parametrize("case, expected", [
    ("missing", "does not exist"),
    ("folder", "is a folder, not a model file"),
    ("text", "not a usable DSQNet model"),
    ("foreign", "not a DSQNet checkpoint"),
    ("bands", "trained on bands ['nir', 'red', 'green']"),
])
def test_a_bad_model_file_is_refused_before_any_work(prefect_api, inputs, tmp_path, capsys, case, expected):
    model = tmp_path / "model.safetensors"
    if case == "text":
        model.write_text("not a model")
    elif case == "foreign":
        save_file({"weight": torch.zeros(2)}, str(model))
    elif case == "bands":
        tiny_model_file(model, band_order=["nir", "red", "green"])
    elif case == "folder":
        model.mkdir()
    assert main(["detect", *cli_args(inputs, tmp_path / "runs", model=model)]) == 1
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "runs" / ".cache" / "spot").exists()  # refused before any scene was read


def test_an_output_folder_that_cannot_be_written_is_named(prefect_api, inputs, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["detect", *cli_args(inputs, blocker / "runs")]) == 1
    err = capsys.readouterr().err
    assert "cannot write to" in err and "--out" in err


def test_bad_parameters_are_explained_without_starting_anything(capsys, tmp_path):
    assert main(["detect", "--region", "1,2,3,4", "--before", "2023-13-01", "--after", "2021-01-01",
                 "--block-size", "600", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "before: '2023-13-01' is not a date" in err and "block_size: must be a multiple of 512" in err
    assert main(["detect", "--region", "1,2,3,4", "--out", str(tmp_path)]) == 1
    assert "missing: before, after" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


DISK_FULL_SCRIPT = """
set -u
mount -t tmpfs -o size=24m tmpfs "$MNT"
"$DSQNET" detect {args} > "$LOGS/first.log" 2>&1 || exit 3
(cd "$MNT/runs/spot" && find . -type f -exec sha256sum {{}} + | sort) > "$LOGS/before.sha"
dd if=/dev/zero of="$MNT/filler" bs=64k > /dev/null 2>&1
"$DSQNET" detect {args} --threshold 0.3 > "$LOGS/second.log" 2>&1
echo $? > "$LOGS/second.rc"
(cd "$MNT/runs/spot" && find . -type f -exec sha256sum {{}} + | sort) > "$LOGS/after.sha"
ls -a "$MNT/runs" > "$LOGS/listing"
"""


def test_a_full_disk_fails_clearly_and_leaves_the_earlier_run_folder_untouched(prefect_api, inputs, tmp_path):
    mount = tmp_path / "mnt"
    mount.mkdir()
    args = " ".join(f"'{a}'" for a in cli_args(inputs, mount / "runs", stride=64))
    script = DISK_FULL_SCRIPT.format(args=args)
    env = {**cli_env(prefect_api), "MNT": str(mount), "LOGS": str(tmp_path), "DSQNET": DSQNET}
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.fail(f"this test needs unprivileged mount namespaces (unshare): {probe.stderr.decode()}")
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "bash", "-c", script], env=env,
                          capture_output=True, timeout=600)
    assert done.returncode == 0, (done.stderr.decode(), (tmp_path / "first.log").read_text()[-3000:])
    second = (tmp_path / "second.log").read_text()
    assert (tmp_path / "second.rc").read_text().strip() == "1", second[-3000:]
    assert "the disk is full" in second and "untouched" in second and "Traceback" not in second
    assert (tmp_path / "before.sha").read_text() == (tmp_path / "after.sha").read_text()
    assert "change.tif" in (tmp_path / "before.sha").read_text()
    assert not [n for n in (tmp_path / "listing").read_text().split() if ".partial-" in n]


def test_a_block_that_fails_stops_the_load_and_the_run_says_why_at_once(prefect_api, tmp_path, monkeypatch):
    """A run whose first block fails (a card out of memory) while most of its scenes are still to load
    used to say so only once the load had finished: minutes for a large region. Now the load stops
    before its next tiles, the run raises the block's error, and it leaves no half-loaded store."""
    import threading

    import flows.detect
    import flows.workers.cluster
    from flows.blocks.streaming import LoadProgress
    from flows.files.locks import exclusive
    from tests.catalog.stac_helpers import SPOT, WORLD_CRS, region_around, utc, write_catalog, write_scene

    origin, size = (SPOT[0] - 600, SPOT[1] + 600), (2400, 2400)  # 0.5 m pixels; the region is 2000 px a side
    (tmp_path / "scenes").mkdir()
    catalog = write_catalog(tmp_path / "scenes", [
        write_scene(tmp_path / "scenes", "before", utc("2021-06-10"), WORLD_CRS, origin, 0.5, size),
        write_scene(tmp_path / "scenes", "after", utc("2023-06-12"), WORLD_CRS, origin, 0.5, size)])

    class OutOfMemory:
        device = torch.device("cpu")

        def predict_proba(self, before, after):
            raise RuntimeError("CUDA out of memory (the test's network)")

    stop_asked, tiles_written, every = threading.Event(), [], 16  # 2000 px in tiles of 512
    real_stop, real_prepare = LoadProgress.stop, flows.detect.prepare_chosen

    def stop(progress):
        stop_asked.set()
        real_stop(progress)

    def prepare_in_small_tiles(*args, on_written, **kwargs):
        def written(tiles):
            on_written(tiles)
            tiles_written.append(len(tiles.tiles))
            if 4 <= len(tiles.tiles) < every:  # the first block's tiles are in: it may start and fail
                assert stop_asked.wait(60), "the failed block did not stop the load"
        return real_prepare(*args, on_written=written, chunk=512, **kwargs)

    monkeypatch.setattr(LoadProgress, "stop", stop)
    monkeypatch.setattr(flows.detect, "prepare_chosen", prepare_in_small_tiles)
    monkeypatch.setattr(flows.detect, "cached_predictor", lambda *_, **__: OutOfMemory())
    monkeypatch.setattr(flows.workers.cluster, "local_gpu_count", lambda: 1)  # one in-process worker, as on a GPU host
    out = tmp_path / "runs"
    model = tiny_model_file(tmp_path / "m.safetensors")
    with pytest.raises(RuntimeError, match="CUDA out of memory"):
        flows.detect.detect_changes(region=json.dumps(region_around(SPOT, 500)), before="2021-06-10",
                                    after="2023-06-12", catalog=str(catalog), model=str(model), out=str(out),
                                    run_name="oom", block_size=512, workers=1, **FAST)
    assert tiles_written and max(tiles_written) < every  # the tiles after the failure were never loaded
    assert not (out / ".cache" / "oom" / "scenes.zarr").exists()  # a stopped load removes what it wrote
    assert not (out / "oom").exists()
    with exclusive(out / ".cache" / "oom.lock"):  # the run let go of its folder, the load done with it
        pass


STUCK_NETWORK = '''
import threading, torch


class Network:
    """One block fails (a card out of memory) while the other block of the worker is inside torch."""

    device = torch.device("cpu")
    in_torch, lock, calls = threading.Event(), threading.Lock(), [0]

    def predict_proba(self, before, after):
        with Network.lock:
            Network.calls[0] += 1
            first = Network.calls[0] == 1
        if first:
            assert Network.in_torch.wait(60)
            raise RuntimeError("CUDA out of memory (the test's network)")
        Network.in_torch.set()
        a = torch.randn(1500, 1500)
        for _ in range(12):  # a batch of most of a second inside torch's matrix products
            a = torch.mm(a, a) / 1500
        return torch.zeros(after.shape[0], *after.shape[2:])
'''

RUN_WITH_STUCK_NETWORK = '''
import json, sys
import flows.detect, flows.workers.cluster
from stuck_network import Network  # by name: Dask pickles the task with it, a class of __main__ by value
network = Network()
flows.detect.cached_predictor = lambda *_, **__: network
flows.workers.cluster.local_gpu_count = lambda: 1  # one in-process worker running two blocks at once, as on a GPU host
try:
    flows.detect.detect_changes(**json.loads(sys.argv[1]))
except RuntimeError as err:
    print(f"raised: {err}")
    sys.exit(3)
'''


def test_a_run_whose_block_fails_beside_another_in_torch_exits_with_its_own_code(prefect_api, inputs, tmp_path):
    """On a GPU host the in-process worker runs two blocks at once. When one failed, the run waited
    30 s for Dask to close the worker, printed its error, and aborted (-6, "terminate called without
    an active exception"): the other block's thread, with batches still to go, was inside torch when
    the interpreter ended. The run now stops its blocks before their next batch and waits for them."""
    _, catalog, region, model = inputs
    (tmp_path / "stuck_network.py").write_text(STUCK_NETWORK)
    params = dict(region=region, before="2021-06-10", after="2023-06-12", catalog=str(catalog), model=str(model),
                  out=str(tmp_path / "runs"), run_name="stuck", block_size=512, workers=1,
                  **{**FAST, "batch_size": 1})  # 64 batches a block: more than Dask's 30 s to close the worker
    env = {**cli_env(prefect_api), "PYTHONPATH": os.pathsep.join([str(tmp_path), str(Path(__file__).parents[2])])}
    done = subprocess.run([sys.executable, "-c", RUN_WITH_STUCK_NETWORK, json.dumps(params)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert "terminate called" not in done.stderr, done.stderr[-3000:]
    assert (done.returncode, done.stdout.splitlines()[-1]) == (3, "raised: CUDA out of memory (the test's network)"), \
        done.stderr[-3000:]
    assert not (tmp_path / "runs" / "stuck").exists()


def _cut_short(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def _garble(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * 12)


def _first_chunk(array: Path) -> Path:
    return next(p for p in sorted((array / "c").rglob("*")) if p.is_file())


DAMAGES = {  # what a crash of the machine, a disk error or a hand may leave in the cache
    "a scenes chunk cut short": lambda work: _cut_short(_first_chunk(work / "scenes.zarr" / "image")),
    "a probabilities chunk garbled": lambda work: _garble(_first_chunk(work / "change_prob.zarr" / "probability")),
    "a scenes array removed": lambda work: __import__("shutil").rmtree(work / "scenes.zarr" / "image"),
    "an array's metadata garbled": lambda work: (work / "scenes.zarr" / "image" / "zarr.json").write_text("{bad"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_cache_is_named_in_one_line_with_the_folder_to_remove(prefect_api, inputs, tmp_path, capsys,
                                                                       damage):
    """Before, a rerun on a damaged cache ended in a traceback from zarr or its codecs
    (``error during blosc decompression: -1``, ``KeyError: 'image'``) or in a JSON error naming no file."""
    out = tmp_path / "runs"
    args = cli_args(inputs, out, **FAST)
    assert main(["detect", *args]) == 0
    published = out / "spot"
    published.rename(tmp_path / "published")  # the run folder gone, its cache left: the rerun reads the cache
    work = out / ".cache" / "spot"
    DAMAGES[damage](work)
    capsys.readouterr()

    assert main(["detect", *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"dsqnet detect: error: the run's cache {work} is damaged (") and err.count("\n") == 1
    assert err.endswith("): remove that folder and run again, which computes it afresh\n")
    assert not published.exists()  # nothing half-written where the outputs go

    __import__("shutil").rmtree(work)  # the fix it names
    assert main(["detect", *args]) == 0
    with rasterio.open(published / "change.tif") as again, rasterio.open(tmp_path / "published" / "change.tif") as first:
        assert np.array_equal(again.read(1), first.read(1))
