"""How much does the detect-changes pipeline cost on top of the network itself?

For each region size: a generated two-date catalog (two COGs of N x N pixels at 0.5 m), the whole
``detect-changes`` flow on it (Prefect, a Dask LocalCluster, scenes.zarr, blocks, COGs, polygons,
preview), then, in the same process, the network alone on as many windows as the scene needs (its
window lattice), in the same batches and precision. Reported: end-to-end seconds, megapixels of
region per second, model seconds, their ratio (the pipeline's overhead), the windows the flow ran
(each lattice window exactly once, so equal to the scene's), the seconds the workers spent inside
the network and the end-to-end seconds over those (``ratio_to_network_in_flow``: what the pipeline
adds around the network, measured within one run), and the peak resident memory of the whole
process tree (this process plus the Dask workers), sampled every 0.2 s, with its value when the
run started (``rss_at_start_gb``: what the earlier runs of this process left); and, for the flow and for
the network alone, the CPU seconds per wall second and the seconds the VM's host took from this
machine's cores (``CpuUse``).

Every size runs on a Prefect API that is already up, as a deployment run on a Prefect server does.
Without PREFECT_API_URL, a bare ``dsqnet detect`` first starts a temporary API in its own process
(once per process); that start is measured on its own, by an empty flow run before the sizes, and
reported as ``prefect_api_start_s`` rather than charged to whichever size happens to run first.

Goals (issue #5): pipeline <= 1.15 x model time; peak memory of the larger region <= 1.5 x that of
the smaller one. ``--repeats N`` runs the flow and the network alone N times in turn per size and
reports medians, since a shared VM's speed drifts between two timings of the same network.

``--stand-in-ms M`` replaces the network, in the flow and in the model-alone figure alike, by a
stand-in that waits M ms per window without holding the CPU, as an accelerator does, and then
marks the generated changes (a clean map, unlike random weights'). Like one accelerator it runs
one batch at a time, and the flow gets the local cluster of a one-GPU machine (one worker, a
``GPU`` resource, ``BLOCKS_PER_GPU`` blocks at once). It shows what the pipeline costs around a
fast network (an H200 runs Swin-T in bf16 at 6-9 ms per window) on a machine without one; its
rows say ``"network": "stand-in"``.

With the stand-in each row also gives ``cpu_s_per_mpx``: the pipeline's own CPU seconds per
megapixel of region, everything but the network (issue #22's goal: at most 0.3, so that a 16-core
GPU host can feed 50 Mpx/s). It is the CPU time of this process (all its threads, the in-process
Dask worker's too) and of the children that ended during the run (the block outputs' writers),
less what the stand-in itself used and the bench's memory sampler; a figure the 2-core CPU can
measure as well as a GPU host, up to the cores' own speed. ``pipeline_cpu`` breaks it down by the
flow's steps (run.json's ``cpu_seconds``) and gives the temporary Prefect API server's CPU apart
(a deployment's server runs elsewhere); ``bench/block_steps.py`` splits the blocks' step further.

``network_timeline`` says where the run's wall went around its blocks, from the start and length
of each block in run.json: how long the run took before its first block started (the flow's
checks and the load's first tiles), the seconds within the blocks' span when no block ran, and how long
the run went on after its last block (the last stitches, the outputs' queue, the assembly). Those
three are what keeps the pipeline above the network alone: issue #22 asks that loading, stitching
and outputs overlap the network rather than come before or after it.

    python bench/pipeline.py                                  # dsqnet_swin_t, 2048^2 and 8192^2
    python bench/pipeline.py --sizes 4096 8192 --batch 16 --stand-in-ms 8   # the pipeline's CPU-s per Mpx
    python bench/pipeline.py --sizes 1024 2048 --precision bf16 --block-size 2048 --json out.json
    python bench/pipeline.py --sizes 2048 --precision bf16 --block-size 2048 --repeats 3     # medians of 3 pairs
    python bench/pipeline.py --sizes 2048 8192 --batch 16 --stand-in-ms 8     # the pipeline around a fast network
    python bench/pipeline.py --sizes 8192 --batch 16 --stand-in-ms 8 --stand-in-gil --stand-in-noisy   # ... fed from Python
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import pystac
import rasterio
import torch
from affine import Affine
from pystac.extensions.eo import Band, EOExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import RasterBand, RasterExtension
from shapely.geometry import box, mapping

from catalog.grid import reproject
from dsqnet import Predictor, build_model
from dsqnet.weights.model_file import save
from flows.outputs.manifest import cpu_seconds
from flows.runtime.allocator import keep_freed_memory
from flows.workers.cluster import device_lock

CRS, RESOLUTION, ORIGIN = "EPSG:32633", 0.5, (500000.0, 5400000.0)
# what each repeat of a size reports besides the row's medians
SAMPLE_FIELDS = ("seconds", "model_seconds", "ratio", "model_seconds_in_workers", "ratio_to_network_in_flow",
                 "peak_rss_gb", "rss_at_start_gb", "cpu", "cpu_s_per_mpx", "network_timeline")
CPU_GOAL = 0.3  # pipeline CPU-s per Mpx of region (#22): 16 cores then feed 50 Mpx/s


def scene(size: int, seed: int, changes: bool) -> np.ndarray:
    """Fields of smooth colour with texture; the after date gains bright rectangles."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(40, 200, (3, size // 64 + 1, size // 64 + 1)).astype(np.uint8)
    image = np.repeat(np.repeat(coarse, 64, axis=1), 64, axis=2)[:, :size, :size]
    # int16 arithmetic: the default int64 noise alone took 1.6 GB at 8192², this process's peak before any run
    image = np.clip(image + rng.integers(-12, 12, image.shape, dtype=np.int16), 1, 255).astype(np.uint8)
    if changes:
        for top, left in rng.integers(0, size - 40, (size // 128, 2)):
            image[:, top:top + 30, left:left + 40] = 235
    return image


def write_catalog(folder: Path, size: int) -> tuple[Path, str]:
    folder.mkdir(parents=True, exist_ok=True)
    transform = Affine(RESOLUTION, 0, ORIGIN[0], 0, -RESOLUTION, ORIGIN[1])
    footprint = box(ORIGIN[0], ORIGIN[1] - size * RESOLUTION, ORIGIN[0] + size * RESOLUTION, ORIGIN[1])
    lonlat = reproject(footprint, CRS, "EPSG:4326")
    catalog = pystac.Catalog("bench", "generated scenes")
    collection = pystac.Collection("demo-rgb", "8-bit RGB scenes", pystac.Extent(
        pystac.SpatialExtent([list(lonlat.bounds)]), pystac.TemporalExtent([[None, None]])))
    catalog.add_child(collection)
    for k, day in enumerate(("2021-06-10", "2023-06-12")):
        path = folder / f"scene_{k}.tif"
        with rasterio.open(path, "w", driver="COG", width=size, height=size, count=3, dtype="uint8", crs=CRS,
                           transform=transform, nodata=0, compress="deflate", blocksize=512) as dst:
            dst.write(scene(size, k, changes=k == 1))
        when = dt.datetime.fromisoformat(day).replace(hour=10, tzinfo=dt.timezone.utc)
        item = pystac.Item(f"scene-{k}", mapping(lonlat), list(lonlat.bounds), when, {}, collection="demo-rgb")
        asset = pystac.Asset(str(path), media_type=pystac.MediaType.COG, roles=["data"])
        item.add_asset("visual", asset)
        proj = ProjectionExtension.ext(item, add_if_missing=True)
        proj.code, proj.shape, proj.transform = CRS, [size, size], list(transform)[:6]
        RasterExtension.ext(asset, add_if_missing=True).bands = [RasterBand.create(data_type="uint8", nodata=0)] * 3
        EOExtension.ext(asset, add_if_missing=True).bands = [Band.create(name=n, common_name=n)
                                                             for n in ("red", "green", "blue")]
        collection.add_item(item)
    catalog.normalize_hrefs(str(folder / "stac"))
    catalog.save(catalog_type=pystac.CatalogType.ABSOLUTE_PUBLISHED)
    inner = footprint.buffer(-2 * RESOLUTION)  # inside the footprint: every pixel observed
    region = reproject(inner, CRS, "EPSG:4326")
    return folder / "stac" / "catalog.json", json.dumps(mapping(region))


class PeakMemory:
    """Peak summed RSS of this process and all its children, sampled in a thread; and that sum at the
    start, which is what earlier runs in this process left behind (memory the allocator keeps)."""

    def __init__(self, every: float = 0.2) -> None:
        self.every, self.peak, self._stop = every, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.start, self.cpu_seconds = 0, 0.0

    @staticmethod
    def _total() -> int:
        total = 0
        for proc in _process_tree():
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            tick = time.thread_time()
            self.peak = max(self.peak, self._total())
            self.cpu_seconds += time.thread_time() - tick  # the bench's own, not the pipeline's
            time.sleep(self.every)

    def __enter__(self) -> "PeakMemory":
        self.start = self._total()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class StandInNetwork:
    """Waits ``ms_per_window`` per window with the CPU free, then marks what turned bright in the after date.

    That finds exactly the rectangles ``scene`` adds, so the outputs are those of a clean change map.
    Batches take turns, as on one card. The flow's model seconds would count a block's waits for its
    partner's turns, so stand-in rows report none.

    ``holds_gil``: instead of waiting, do that many milliseconds of Python work (as measured alone),
    as a network does that feeds a GPU from Python: on an H200 Swin-T in bf16 keeps one core busy
    launching kernels, holding the GIL, so other Python threads of its process slow it down, which
    a sleeping stand-in cannot show. ``noisy``: a speckled map, as random weights give, whose
    polygons cost as much as the real bench's.
    """

    device = torch.device("cpu")

    def __init__(self, ms_per_window: float, holds_gil: bool = False, noisy: bool = False) -> None:
        self.seconds_per_window = ms_per_window / 1000
        self.steps_per_second = _python_steps_per_second() if holds_gil else None
        self.noisy = noisy

    def predict_proba(self, before, after) -> torch.Tensor:
        # the workers' own per-device lock: Dask pickles the task with this object, and a lock of its
        # own would not pickle
        with device_lock("stand-in"):
            tick = time.thread_time()
            if self.steps_per_second:
                _python_steps(int(self.steps_per_second * self.seconds_per_window * len(before)))
            else:
                time.sleep(self.seconds_per_window * len(before))
            if self.noisy:
                probability = torch.rand(after.shape[0], *after.shape[2:]) * 0.6 + 0.2
            else:
                darkest_band = torch.as_tensor(after).amin(dim=1).float()
                probability = torch.sigmoid((darkest_band - 222) / 2)  # fields stay under 212, new rectangles 235
            count_cpu(time.thread_time() - tick)
            return probability


def _python_steps(count: int) -> int:
    total = 0
    for k in range(count):
        total += k & 7
    return total


def _python_steps_per_second() -> float:
    started = time.perf_counter()
    _python_steps(2_000_000)
    return 2_000_000 / (time.perf_counter() - started)


# The stand-in's CPU seconds, counted in the threads that ran it. Dask pickles the infer-block task's
# function by value (its Prefect task object has taken its module name), with everything it refers
# to that this script patched in (the stand-in), and runs the copy in this process's worker: so the
# copies add to this process's one count, found by module name, rather than to counts of their own.
NETWORK_CPU = [0.0]


def count_cpu(seconds: float) -> None:
    with device_lock("bench-cpu-counts"):  # one lock per process, whichever copy asks
        sys.modules[__name__].NETWORK_CPU[0] += seconds


class PipelineCpu:
    """The CPU seconds a run costs this machine: every thread of this process (the in-process Dask
    worker's included) and the child processes that ended during it (the block outputs' writers),
    less the stand-in network's; by step from run.json's ``cpu_seconds``.

    Within the blocks' step the blocks, stitching, and Prefect and Dask around them run at once,
    and much of their work is done in threads of zarr and torch rather than in the thread that asks
    for it, so that step is reported whole; ``bench/block_steps.py`` splits it outside the flow.
    The Prefect API's server process is counted apart (``server``): a deployment's runs report to
    a server that runs elsewhere and serves many runs.
    """

    def __enter__(self) -> "PipelineCpu":
        self._start, self._server, self._network = cpu_seconds(), _server_cpu_seconds(), NETWORK_CPU[0]
        return self

    def __exit__(self, *exc) -> None:
        end, server = cpu_seconds(), _server_cpu_seconds()
        self.process, self.children = end[0] - self._start[0], end[1] - self._start[1]
        self.server = None if server is None or self._server is None else server - self._server
        self.network = NETWORK_CPU[0] - self._network

    def breakdown(self, steps: dict[str, dict[str, float]], sampler: float, megapixels: float) -> dict:
        """The pipeline's CPU seconds (all but the network's and the bench's sampler's) per megapixel
        of region, and by step (``steps``: run.json's ``cpu_seconds``)."""
        def step(name: str) -> float:
            return sum(steps.get(name, {}).values())

        total = self.process + self.children - self.network - sampler
        infer = steps.get("infer blocks", {"process": 0.0, "children": 0.0})
        parts = {
            "load scenes": step("load scenes"),
            "blocks' step, less the network (blocks, stitching, Prefect and Dask)": infer["process"] - self.network,
            "outputs (while blocks run, then after)": infer["children"] + step("block outputs")
                                                      + step("mosaic, vectorise, preview"),
        }
        rest = "the rest (choosing scenes, planning, publishing, the flows' start and end)"
        parts[rest] = total - sum(parts.values())
        return {"cpu_s_per_mpx": round(total / megapixels, 4), "cpu_s": round(total, 2),
                "network_cpu_s": round(self.network, 2), "sampler_cpu_s": round(sampler, 2),
                "api_server_cpu_s": None if self.server is None else round(self.server, 2),
                "by_step_s": {k: round(v, 2) for k, v in parts.items()},
                "by_step_s_per_mpx": {k: round(v / megapixels, 4) for k, v in parts.items()}}


def _server_cpu_seconds() -> float | None:
    """CPU seconds so far of the temporary Prefect API's server (a uvicorn child), None if there is none."""
    total, found = 0.0, False
    for proc in psutil.Process().children(recursive=True):
        try:
            if any("uvicorn" in part for part in proc.cmdline()):
                times = proc.cpu_times()
                total, found = total + times.user + times.system, True
        except psutil.Error:
            pass
    return total if found else None


class CpuUse:
    """CPU seconds of this process tree and of the machine's stolen time over a span.

    On a shared VM the network's speed varies between runs; CPU seconds per wall second below the
    thread count, or stolen seconds, show when a row was slowed by something other than the code.
    """

    def __enter__(self) -> "CpuUse":
        self.wall, self.cpu, self.steal = time.perf_counter(), _tree_cpu_seconds(), _stolen_seconds()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = _tree_cpu_seconds() - self.cpu
        self.steal = None if self.steal is None else _stolen_seconds() - self.steal

    def summary(self) -> dict:
        return {"cpu_per_wall": round(self.cpu / self.wall, 2),
                "stolen_s": None if self.steal is None else round(self.steal, 1)}


def _process_tree() -> list[psutil.Process]:
    """This process and all its children (the Prefect API's server, worker processes)."""
    me = psutil.Process()
    return [me, *me.children(recursive=True)]


def _tree_cpu_seconds() -> float:
    total = 0.0
    for proc in _process_tree():
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def _stolen_seconds() -> float | None:
    """All cores' stolen time so far (Linux /proc/stat), or None where the kernel does not say."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def model_alone(model_path: Path, windows: int, window: int, batch: int, precision: str, threads: int,
                stand_in: StandInNetwork | None = None) -> float:
    torch.set_num_threads(threads)
    from dsqnet.weights.model_file import load

    predictor = stand_in or Predictor(load(model_path), precision=precision)
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (batch, 3, window, window), dtype=np.uint8)
    b = rng.integers(0, 255, (batch, 3, window, window), dtype=np.uint8)
    predictor.predict_proba(a[:1], b[:1])  # warm-up outside the timing; the flow's figure has its own in it
    started = time.perf_counter()
    for first in range(0, windows, batch):
        n = min(batch, windows - first)
        predictor.predict_proba(a[:n], b[:n])
    return time.perf_counter() - started


def prefect_api_start() -> float:
    """Seconds until a first (empty) flow run is done: the temporary API's start when none is configured."""
    from prefect import flow

    @flow(name="bench-warm-up")
    def warm_up() -> None:
        pass

    started = time.perf_counter()
    warm_up()
    return time.perf_counter() - started


def network_timeline(reports: list[dict], run_started: dt.datetime, run_seconds: float) -> dict | None:
    """The run's wall around its computed blocks (``reports``, run.json's, each with its UTC start
    and its seconds), in seconds from the run's start: None when no block was computed."""
    if not reports:
        return None
    starts = [(dt.datetime.fromisoformat(r["started"]) - run_started).total_seconds() for r in reports]
    spans = sorted((start, start + r["seconds"]) for start, r in zip(starts, reports))
    idle, reach = 0.0, spans[0][1]
    for start, end in spans[1:]:
        idle += max(0.0, start - reach)
        reach = max(reach, end)
    first, last = spans[0][0], reach
    return {"first_block_started_s": round(first, 3), "last_block_ended_s": round(last, 3),
            "idle_between_blocks_s": round(idle, 3), "after_last_block_s": round(run_seconds - last, 3),
            "blocks_busy_share": round((last - first - idle) / run_seconds, 3)}


def write_catalogs(sizes: list[int], work: Path) -> dict[int, tuple[Path, str]]:
    """Every size's scenes, written by a child process: generating them peaks at several times a
    scene's bytes, which would otherwise stand as this process's peak memory in every run.json."""
    folders = [work / f"scenes_{size}" for size in sizes]
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
        return dict(zip(sizes, child.map(write_catalog, folders, sizes)))


def run(size: int, args: argparse.Namespace, work: Path, scenes: tuple[Path, str]) -> dict:
    """One size: ``args.repeats`` times the flow then the network alone, reported as medians and samples.

    On a shared VM the same network runs up to 8 % faster or slower from one half minute to the
    next, so one flow against one model-alone timing can put the ratio anywhere within that; the
    median of interleaved pairs is steadier. Every flow run starts with the model unloaded, as a
    run of the deployment in a fresh process does.
    """
    samples = [run_once(size, args, work / f"runs_{size}_{k}", scenes) for k in range(args.repeats)]
    seconds = statistics.median(s["seconds"] for s in samples)
    model_seconds = statistics.median(s["model_seconds"] for s in samples)
    last = samples[-1]
    height, width = last["grid"]
    return {
        "size": size, "network": last["network"], "grid": last["grid"], "repeats": len(samples),
        "seconds": round(seconds, 2),
        "mpx_per_s": round(height * width / 1e6 / seconds, 4),
        "model_seconds": round(model_seconds, 2), "ratio": round(seconds / model_seconds, 3),
        "samples": [{k: s[k] for k in SAMPLE_FIELDS} for s in samples],
        "cpu_s_per_mpx": (round(statistics.median(s["cpu_s_per_mpx"] for s in samples), 4)
                          if last["cpu_s_per_mpx"] is not None else None),
        "pipeline_cpu": last["pipeline_cpu"],
        "windows_run": last["windows_run"], "windows_scene": last["windows_scene"],
        "peak_rss_gb": max(s["peak_rss_gb"] for s in samples), "timings": last["timings"],
        "outputs_finished_after_s": last["outputs_finished_after_s"],
        "flow_process_peak_rss_gb_by_step": last["flow_process_peak_rss_gb_by_step"],
        "network_timeline": last["network_timeline"],
    }


def replace(module, name: str, value) -> None:
    """``module.name = value``, for a name the module has: a renamed function would otherwise leave
    the real one running and the rows measuring something else, silently."""
    if not hasattr(module, name):
        raise AttributeError(f"{module.__name__} has no {name} to replace; update bench/pipeline.py")
    setattr(module, name, value)


def run_once(size: int, args: argparse.Namespace, out: Path, scenes: tuple[Path, str]) -> dict:
    import flows.workers.cluster
    from flows.detect import detect_changes

    catalog, region = scenes
    stand_in = (StandInNetwork(args.stand_in_ms, args.stand_in_gil, args.stand_in_noisy)
                if args.stand_in_ms is not None else None)
    if stand_in:  # the flow's single worker runs in this process, so it picks these up
        import flows.detect

        replace(flows.detect, "cached_predictor", lambda *_, **__: stand_in)
        replace(flows.detect, "warming_up", lambda *_, **__: contextlib.nullcontext())  # nothing to load
        replace(flows.workers.cluster, "local_gpu_count", lambda: 1)  # the local cluster of a one-GPU machine
    flows.workers.cluster._load_predictor.cache_clear()
    started, started_utc = time.perf_counter(), dt.datetime.now(dt.UTC)
    with PeakMemory() as memory, CpuUse() as flow_cpu, PipelineCpu() as pipeline_cpu:
        summary = detect_changes(region=region, before="2021-06-10", after="2023-06-12", catalog=str(catalog),
                                 model=str(args.model_file), out=str(out), run_name="bench",
                                 block_size=args.block_size, batch_size=args.batch, precision=args.precision,
                                 workers=1)
    seconds = time.perf_counter() - started
    manifest = json.loads((Path(summary["run_folder"]) / "run.json").read_text())
    threads = os.cpu_count() or 1
    with CpuUse() as model_cpu:
        model_seconds = model_alone(args.model_file, manifest["windows"]["scene"], 512, args.batch, args.precision,
                                    threads, stand_in)
    height, width = manifest["grid"]["shape"]
    # the network's CPU is known for the stand-in only: a real one computes in torch's threads too
    own_cpu = (pipeline_cpu.breakdown(manifest["cpu_seconds"], memory.cpu_seconds, height * width / 1e6)
               if stand_in else None)
    return {
        "network": "stand-in" if stand_in else args.model, "grid": manifest["grid"]["shape"],
        "cpu_s_per_mpx": own_cpu and own_cpu["cpu_s_per_mpx"], "pipeline_cpu": own_cpu,
        "seconds": round(seconds, 2), "model_seconds": round(model_seconds, 2),
        "ratio": round(seconds / model_seconds, 3),
        "model_seconds_in_workers": None if stand_in else manifest["model_seconds"],
        # the same network timed inside the run: free of the machine's drift between the two timings,
        # blind to the network running slower inside the flow than alone
        "ratio_to_network_in_flow": None if stand_in else round(seconds / manifest["model_seconds"], 3),
        "windows_run": manifest["windows"]["run"], "windows_scene": manifest["windows"]["scene"],
        "peak_rss_gb": round(memory.peak / 2**30, 3), "rss_at_start_gb": round(memory.start / 2**30, 3),
        "timings": manifest["timings"], "outputs_finished_after_s": manifest.get("outputs_finished_after_s"),
        "flow_process_peak_rss_gb_by_step": manifest["peak_rss_gb"],
        "network_timeline": network_timeline(manifest["blocks"]["reports"], started_utc, seconds),
        "cpu": {"flow": flow_cpu.summary(), "model_alone": model_cpu.summary()},
    }


def main() -> None:
    # as `dsqnet` and the deployments' processes start: blocks reuse what the blocks before them freed
    keep_freed_memory()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--model", default="dsqnet_swin_t", help="registered architecture, random weights")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--block-size", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1, help="flow and network-alone pairs per size; the "
                        "rows give their medians (the machine's speed drifts between timings)")
    parser.add_argument("--stand-in-ms", type=float, help="replace the network by a stand-in taking this many "
                        "ms per window with the CPU free (the pipeline around an accelerator)")
    parser.add_argument("--stand-in-gil", action="store_true", help="the stand-in does Python work holding the "
                        "GIL instead of waiting, as a network feeding a GPU from Python does")
    parser.add_argument("--stand-in-noisy", action="store_true", help="the stand-in's map is speckled, as random "
                        "weights' is, instead of clean")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dsqnet-bench-") as tmp:
        work = Path(tmp)
        torch.manual_seed(0)
        args.model_file = save(build_model(args.model), work / "model.safetensors")
        catalogs = write_catalogs(args.sizes, work)
        api_seconds = prefect_api_start()
        rows = [run(size, args, work, catalogs[size]) for size in args.sizes]
    print(f"prefect API start (once per process, not in the rows): {api_seconds:.1f} s")
    for row in rows:
        print(json.dumps(row))
    for row in rows:
        if row["cpu_s_per_mpx"] is not None:
            parts = ", ".join(f"{k} {v}" for k, v in row["pipeline_cpu"]["by_step_s_per_mpx"].items())
            print(f"{row['size']}²: the pipeline's own CPU {row['cpu_s_per_mpx']} s per Mpx of region "
                  f"(goal <= {CPU_GOAL}); by step, s per Mpx: {parts}")
    for row in rows:
        if timeline := row["network_timeline"]:
            print(f"{row['size']}²: first block at {timeline['first_block_started_s']} s, last one done at "
                  f"{timeline['last_block_ended_s']} s of {row['samples'][-1]['seconds']} s; no block running for "
                  f"{timeline['idle_between_blocks_s']} s between them")
    if len(rows) >= 2:
        print(f"memory growth {rows[-1]['peak_rss_gb'] / rows[0]['peak_rss_gb']:.2f}x for "
              f"{rows[-1]['size'] ** 2 / rows[0]['size'] ** 2:.0f}x the pixels (goal <= 1.5x); "
              f"overhead ratios {[r['ratio'] for r in rows]} (goal <= 1.15)")
    if args.json:
        args.json.write_text(json.dumps({"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                                         "args": {k: str(v) for k, v in vars(args).items()},
                                         "prefect_api_start_s": round(api_seconds, 2), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
