"""``detect-changes``: a region and two dates in, change rasters and polygons out.

    choose scenes -> load scenes.zarr, and meanwhile: plan blocks -> infer blocks (Dask workers;
    each block as soon as its tiles are loaded, stitched as soon as its neighbours are in, and its
    share of the outputs written) -> stitch what is left -> {mosaic, vectorise, preview} at once
    -> publish

Tasks pass paths and small records; pixels stay in the zarr stores. The inference step is a
subflow so that its Dask cluster (local, or the one at ``dask_address``) is chosen per run. Work
lands in ``<out>/.cache/<run>/`` (``scenes.zarr``; each block's window sums; ``change_prob.zarr``
with a done marker per stitched block), so a rerun after a crash only computes the blocks that are
missing; the run folder ``<out>/<run>/`` is staged aside and appears only when every output is written.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import geopandas as gpd
import zarr
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.runtime import flow_run
from prefect.states import Cancelled

import dsqnet
from catalog import date_pair, open_source, parse_region
from catalog.errors import CatalogError
from catalog.prepare import PreparedScenes, choose_pair, chosen_grid, cloud_mask_gap, grid_summary, prepare_chosen
from catalog.regions import Region
from catalog.selection import DateChoice
from catalog.store import INPUTS, inputs_hash, open_scenes

from flows.params.signature import takes_parameters_of
from flows.params.inputs import check_inputs
from flows.outputs.assemble import change_polygons, write_change_rasters, write_preview
from flows.outputs.artifacts import Progress, publish_artifacts
from flows.blocks.infer import BlockJob, BlockStopped, clear_stop, process_block, stop_blocks
from flows.outputs.per_block import BlockOutputs, block_output_writer
from flows.params.demo import demo_inputs
from flows.outputs.manifest import FinishTimes, StepTimer, stac_item
from flows.runtime.versions import code_version, package_versions
from flows.models.resolve import ModelRecord, resolve_model
from flows.params.detect import DetectRequest, ParameterError, parse_request

from flows.blocks.store import ProbabilityStore

from flows.runtime.damaged_cache import said_if_damaged
from flows.outputs.run_folder import RunFolder, check_writable, expect_output_bytes, link_tree, run_lock, with_output_errors
from flows.runtime.allocator import release_freed_memory
from flows.runtime.collector import freeze_loaded_objects
from flows.runtime.interrupts import cancellable, note_resume_point
from flows.runtime import heartbeats
from flows.scoring.known_change import score_run, truth_outside
from flows.blocks.stitch import Stitcher, stitch
from flows.blocks.streaming import (
    LoadStopped,
    block_reads,
    load_failure_first,
    load_of,
    reads_in_plan_order,
    stream_blocks,
    track_load,
)
from flows.runtime.subflows import as_subflow
from dsqnet.inference.lattice import Lattice
from flows.blocks.lattice import Block, BlockSelection, plan_blocks

from flows.workers.cluster import (
    DASK_ADDRESS_ENV,
    block_task_resources,
    blocks_in_flight,
    cached_predictor,
    dask_task_runner,
    local_worker_threads,
    outputs_while_blocks_run,
    quiet_local_cluster,
    runs_in_this_process,
    warming_up,
)

heartbeats.install()  # a run ends as soon as its work is done, not up to a second later

INFERENCE_CODE = (Path(dsqnet.__file__).parent, Path(__file__).with_name("blocks"))


@dataclass(frozen=True)
class BlockPlan:
    job: BlockJob
    blocks: list[Block]
    todo: list[Block]
    windows: int

    def selection(self, block_size: int) -> BlockSelection:
        """``todo`` in a few numbers (``BlockSelection``), for the blocks' subflow."""
        last = self.blocks[-1]
        return BlockSelection.of(last.bottom, last.right, block_size, self.todo)


# --------------------------------------------------------------------------------------------------
# Tasks


@task(name="check-model", cache_policy=NO_CACHE)
def check_model(model: str | None, registry: str | None = None) -> ModelRecord:
    return resolve_model(model, registry=registry)


@task(name="choose-scenes", cache_policy=NO_CACHE)
def choose_scenes(request: DetectRequest) -> tuple[Region, DateChoice, DateChoice]:
    region = parse_region(request.region, regions_file=request.regions)
    before, after = date_pair(request.before, request.after, request.tolerance_days)
    collections = request.collection or list(region.collections) or None  # the request's, else the regions file's
    first, second = choose_pair(region, before, after, open_source(request.catalog), collections)
    if first.collection_reason:
        get_run_logger().info(first.collection_reason)
    if (gap := cloud_mask_gap(first, second)) is not None:
        get_run_logger().warning(gap)
    return region, first, second


@task(name="load-scenes", cache_policy=NO_CACHE)
def load_scenes(request: DetectRequest, region: Region, first: DateChoice, second: DateChoice, work: Path) -> PreparedScenes:
    """Both dates onto the grid in ``work/scenes.zarr``, the tiles the blocks read first in the plan's
    order, telling the blocks waiting on them which tiles are written. A load the failing run
    stopped ends Cancelled: the run's own error is what went wrong."""
    path = work / "scenes.zarr"
    progress = load_of(path)
    try:
        with dask.config.set(scheduler="threads"):  # reading the sources stays on this machine
            scenes = prepare_chosen(region, *date_pair(request.before, request.after, request.tolerance_days), first,
                                    second, path, crs=request.crs, resolution=request.resolution,
                                    on_written=progress.advance if progress else None,
                                    reads_first=lambda shape: reads_in_plan_order(shape, request.block_size,
                                                                                  request.window, request.stride))
    except BaseException as err:
        if progress:
            progress.finish(err)
        if isinstance(err, LoadStopped):  # the run's own error says what went wrong
            return Cancelled(message=str(err))
        raise
    if progress:
        progress.finish()
    return scenes


@task(name="plan-blocks", cache_policy=NO_CACHE)
def plan(request: DetectRequest, scenes_path: Path, model: ModelRecord, work: Path) -> BlockPlan:
    """The blocks of the scenes' grid and those still to compute; the store may still be loading, and
    a load that fails removes it under this task: the load's error is then this task's."""
    with load_failure_first(scenes_path):
        dataset = open_scenes(scenes_path, complete=False)
        height, width = dataset.sizes["y"], dataset.sizes["x"]
        blocks = plan_blocks(height, width, request.block_size)
        grid = (blocks[-1].row + 1, blocks[-1].col + 1)
        key = inputs_hash({"scenes": dataset.attrs[INPUTS], "model": model.sha256, "window": request.window,
                           "stride": request.stride, "batch": request.batch_size, "precision": request.precision,
                           "block_size": request.block_size, "code": code_version(*INFERENCE_CODE)})
        store = ProbabilityStore.prepare(work / "change_prob.zarr", dataset, grid, key)
        summed = store.summed_blocks()
        remote = request.dask_address or os.environ.get(DASK_ADDRESS_ENV)
        threads = None if remote else local_worker_threads(request.workers)  # remote workers: their own choice
        job = BlockJob(scenes=str(scenes_path), probabilities=str(store.path), model_path=model.path,
                       model_hash=model.sha256, window=request.window, stride=request.stride,
                       batch_size=request.batch_size, precision=request.precision, device=request.device,
                       threads=threads)
        todo = [] if store.complete else [b for b in blocks if (b.row, b.col) not in summed]
        return BlockPlan(job, blocks, todo, Lattice(height, width, request.window, request.stride).count)


@task(name="infer-block", cache_policy=NO_CACHE, task_run_name="infer-block-{block.row}-{block.col}")
def infer_block(job: BlockJob, block: Block) -> dict:
    """One block on a worker; the model is loaded once per process and reused."""
    predictor = cached_predictor(job.model_path, job.model_hash, job.precision, job.device, job.threads)
    try:
        report = process_block(job, block, predictor.predict_proba, device=str(predictor.device))
    except BlockStopped as stopped:  # the run's own error says what went wrong
        return Cancelled(message=str(stopped))
    if blocks_in_flight() == 1:  # alone on its worker: its buffers go back before the next block
        release_freed_memory()
    return report.to_dict()


@flow(name="infer-blocks", validate_parameters=False)
@cancellable("detect")
def infer_blocks(job: BlockJob, todo: BlockSelection, outputs: BlockOutputs, outputs_how: str | None,
                 plan_line: str = "") -> list[dict]:
    """The blocks ``todo`` on the Dask workers (GPU workers when there are any), each as soon as the
    rows of the scenes it reads are loaded (flows/blocks/streaming.py); meanwhile, each block of the
    plan is stitched here as soon as the blocks it needs are in, and its share of the outputs written
    as ``outputs_how`` says (flows/workers.outputs_while_blocks_run). ``plan_line`` is printed once
    the first block can start: a load that fails before has only its error to say. The blocks come
    as a ``BlockSelection``, not lists: this subflow's parameters go to the Prefect API."""
    with load_failure_first(job.scenes):
        return infer_streamed_blocks(job, todo.plan(), todo.blocks(), outputs, outputs_how, plan_line)


def infer_streamed_blocks(job: BlockJob, blocks: list[Block], todo: list[Block], outputs: BlockOutputs,
                          outputs_how: str | None, plan_line: str) -> list[dict]:
    runner = FlowRunContext.get().task_runner
    resources = block_task_resources(runner.client)
    # the plan's row-major order first: a block is stitched once the row below it is in
    priority = {block.name: len(todo) - k for k, block in enumerate(todo)}

    def submit(block: Block):
        with dask.annotate(priority=priority[block.name], **resources):
            return infer_block.submit(job, block)

    lattice = job_lattice(job)
    loading = load_of(job.scenes)
    if loading is not None:
        loading.wait_for_any([block_reads(lattice, block) for block in todo])
    if plan_line:
        print(plan_line)
    by_name = {block.name: block for block in blocks}
    reports = []
    clear_stop(job)
    try:
        with block_output_writer(outputs, len(blocks), outputs_how) as writer, \
                Progress(len(todo), f"blocks inferred of {len(todo)}") as progress:
            stitcher = Stitcher(ProbabilityStore(job.probabilities), job.scenes, lattice, blocks,
                                on_stitched=writer.submit if writer else None)
            for report in stream_blocks(todo, lattice, loading, submit):
                reports.append(report)
                stitcher.add(by_name[report["block"]])
                progress.advance(report["windows"])
    except BaseException:
        stop_blocks(job)  # none left inside torch in this process when it ends
        raise
    order = {block.name: k for k, block in enumerate(todo)}
    return sorted(reports, key=lambda r: order[r["block"]])  # the plan's row-major order


def job_lattice(job: BlockJob) -> Lattice:
    """The window lattice of the job's scene."""
    height, width = zarr.open_group(job.scenes, mode="r")["valid"].shape[-2:]
    return Lattice(height, width, job.window, job.stride)


@task(name="stitch-blocks", cache_policy=NO_CACHE)
def stitch_blocks(plan: BlockPlan) -> int:
    """The blocks not stitched while inferring (all of them after a resume) -> their probabilities;
    returns how many blocks were stitched here."""
    store = ProbabilityStore(plan.job.probabilities)
    if store.complete:
        return 0
    return stitch(store, plan.job.scenes, job_lattice(plan.job), plan.blocks)


@task(name="block-outputs", cache_policy=NO_CACHE)
def complete_block_outputs(outputs: BlockOutputs, blocks: list[Block]) -> int:
    """The outputs' share of every block that has none yet: all of them where the network had this
    machine's cores, else those stitched by a run that was killed; returns how many."""
    return outputs.make_missing(blocks)


@task(name="mosaic", cache_policy=NO_CACHE)
def mosaic(outputs: BlockOutputs, blocks: list[Block], folder: Path):
    counts = write_change_rasters(outputs, blocks, folder)
    link_tree(Path(outputs.store), folder / "change_prob.zarr")
    return counts


@task(name="vectorise", cache_policy=NO_CACHE)
def vectorise(outputs: BlockOutputs, scenes: PreparedScenes, blocks: list[Block], model: ModelRecord, run_id: str,
              folder: Path) -> gpd.GeoDataFrame:
    polygons = change_polygons(outputs, blocks)
    before, after = scenes.before, scenes.after
    polygons = polygons.assign(
        before_datetime=before.records[0].datetime, after_datetime=after.records[0].datetime,
        before_scenes=",".join(before.ids), after_scenes=",".join(after.ids),
        model_name=model.name, model_version=model.version, model_sha256=model.sha256, run_id=run_id,
    )
    polygons.to_parquet(folder / "changes.parquet")
    return polygons


@task(name="publish", cache_policy=NO_CACHE)
def publish(run: RunFolder, manifest: dict, polygons: gpd.GeoDataFrame) -> Path:
    publish_artifacts(manifest, polygons)
    (run.staging / "run.json").write_text(json.dumps(manifest, indent=2, default=str))
    return run.commit()


# --------------------------------------------------------------------------------------------------
# The flow


@flow(name="detect-changes", validate_parameters=False, log_prints=True)
@takes_parameters_of(DetectRequest)
@cancellable("detect")
def detect_changes(**params) -> dict:
    """Detect what changed in ``region`` between ``before`` and ``after``; with no region and dates, the demo."""
    freeze_loaded_objects()  # the imports' objects out of the collector's passes (flows/runtime/collector.py)
    request = parse_request(**params)
    check_inputs(request)  # before any task: a bad region, catalog, model or --out fails in one line
    with ExitStack() as held:  # until the run ends: the model's warm-up, the run folder's lock
        return with_output_errors(lambda checked: run_detect(checked, held), request, Path(request.out))


def run_detect(request: DetectRequest, held: ExitStack) -> dict:
    timer = StepTimer()
    lap = timer.lap

    out_dir = Path(request.out)
    check_writable(out_dir)
    if request.is_demo:
        request = with_demo(request, out_dir / ".cache" / "demo")
        lap("demo data")
    record = check_model(request.model, request.registry)
    if runs_in_this_process(request.dask_address, request.workers):  # its worker shares this model cache
        held.enter_context(warming_up(record.path, record.sha256, request.precision, request.device,
                                      local_worker_threads(request.workers), request.batch_size, request.window))
    region_, first, second = choose_scenes(request)
    try:
        grid = chosen_grid(region_, first, second, crs=request.crs, resolution=request.resolution)
        expect_output_bytes(bytes_needed(grid.shape))
    except CatalogError:
        grid = None  # load-scenes says what is wrong with the scenes
    if grid is not None and request.truth and (astray := truth_outside(request.truth, grid)) is not None:
        raise ParameterError(astray)
    lap("choose scenes")
    name = request.run_name or run_folder_name(region_.name, request.before, request.after)
    work = out_dir / ".cache" / name
    work.mkdir(parents=True, exist_ok=True)
    held.enter_context(run_lock(out_dir, name))  # as soon as its name is known
    held.enter_context(said_if_damaged(work))  # what an earlier run left may be reused, and may be damaged
    # the load goes on beside planning and inference: blocks start on the tiles already written
    progress, load_time = track_load(work / "scenes.zarr"), FinishTimes()
    loading = load_scenes.submit(request, region_, first, second, work)
    loading.add_done_callback(load_time.on_done("load"))
    loading.add_done_callback(progress.task_ended)
    with load_failure_first(work / "scenes.zarr"):  # an error here stops the load rather than waits for it
        progress.wait_for_grid()
        work_plan = plan(request, work / "scenes.zarr", record, work)
        lap("plan blocks")
        store = ProbabilityStore(work_plan.job.probabilities)
        note_resume_point(store.reusable_blocks)  # what an interrupted run reports
        grid = grid or chosen_grid(region_, first, second, crs=request.crs, resolution=request.resolution)
        outputs = BlockOutputs.prepare(store, grid.crs.to_wkt(), grid.transform, request.block_size,
                                       request.threshold, request.min_area_m2, scenes=work / "scenes.zarr")
        reports = infer_planned_blocks(request, work_plan, outputs)
        lap("infer blocks")
        scenes = loading.result()  # what is left of the load: stitching and outputs read every row
        lap("load scenes")
    stitch_blocks(work_plan)
    lap("stitch blocks")
    late_outputs = complete_block_outputs(outputs, work_plan.blocks)
    lap("block outputs")

    run_id = run_identifier(name)
    with RunFolder(out_dir / name) as run:
        store.mark_complete()  # from here on the probabilities are only read, by three steps at once
        store.clear_sums()
        finishes = FinishTimes()
        rasters = mosaic.submit(outputs, work_plan.blocks, run.staging)
        shapes = vectorise.submit(outputs, scenes, work_plan.blocks, record, run_id, run.staging)
        rasters.add_done_callback(finishes.on_done("mosaic"))
        shapes.add_done_callback(finishes.on_done("vectorise"))
        write_preview(outputs, work_plan.blocks, (request.before, request.after), run.staging / "preview.png")
        finishes.mark("preview")
        metrics = (score_run(store, work_plan.blocks, scenes.grid.transform, scenes.grid.crs.to_wkt(),
                             request.threshold, request.truth) if request.truth else None)
        counts, polygons = rasters.result(), shapes.result()
        lap("mosaic, vectorise, preview")
        manifest = build_manifest(request, region_, scenes, record, work_plan, reports, counts, polygons, metrics,
                                  timer, run_id, out_dir / name)
        manifest["blocks"]["outputs_made_after_inference"] = late_outputs
        manifest["scenes"]["load_seconds"] = load_time.seconds.get("load")  # beside planning and the blocks
        manifest["outputs_finished_after_s"] = finishes.seconds
        folder = publish(run, manifest, polygons)
    outputs.clear()  # the COGs and polygons hold it all now
    get_run_logger().info("published %s", folder)
    return {**{k: manifest[k] for k in ("run_folder", "changed_km2", "polygons", "metrics", "timings")},
            "text": summary_text(manifest)}


# --------------------------------------------------------------------------------------------------
# Helpers


def infer_planned_blocks(request: DetectRequest, work_plan: BlockPlan, outputs: BlockOutputs) -> list[dict]:
    """The plan's blocks still to compute, in the ``infer-blocks`` subflow on the request's Dask
    cluster; their reports."""
    done = len(work_plan.blocks) - len(work_plan.todo)
    plan_line = (f"{len(work_plan.blocks)} blocks of {request.block_size} px, {len(work_plan.todo)} to compute "
                 f"({done} already done), {work_plan.windows} windows in the scene")
    if not work_plan.todo:  # a finished store needs no cluster
        print(plan_line)
        return []
    runner = dask_task_runner(request.dask_address, request.workers)
    with quiet_local_cluster(), as_subflow():  # a local cluster starts with the subflow
        how = outputs_while_blocks_run(request.dask_address, request.workers, request.device)
        return infer_blocks.with_options(task_runner=runner)(work_plan.job, work_plan.selection(request.block_size),
                                                             outputs, how, plan_line)


def with_demo(request: DetectRequest, folder: Path) -> DetectRequest:
    demo = demo_inputs(folder)
    print(f"No region and dates given: running the embedded demo ({demo.region}, {demo.before} -> {demo.after}); "
          f"its data is in {folder}")
    return request.model_copy(update={
        "region": demo.region, "before": demo.before, "after": demo.after, "catalog": demo.catalog,
        "regions": demo.regions, "truth": request.truth or demo.truth,
    })


# Bytes per pixel a run writes, uncompressed, at its peak: scenes.zarr (2 dates x 3 bands + valid), the
# blocks' window sums (sum and weight), change_prob.zarr, and both COGs with their overviews twice
# (the blocks' tiles, then the run folder's files).
BYTES_PER_PIXEL = 8 + 8 + 4 + 2 * 5 * 4 / 3


def bytes_needed(shape: tuple[int, int]) -> int:
    """About how much disk a run over a grid of ``shape`` (rows, cols) needs under ``out``, at most."""
    return int(shape[0] * shape[1] * BYTES_PER_PIXEL)


def run_folder_name(region: str, before: str, after: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", region).strip("-") or "region"
    return f"{slug}_{before}_{after}"


def run_identifier(name: str) -> str:
    flow_run_id = flow_run.get_id()
    return f"{name}-{str(flow_run_id)[:8]}" if flow_run_id else f"{name}-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}"


def build_manifest(request: DetectRequest, region: Region, scenes: PreparedScenes, model: ModelRecord, plan: BlockPlan,
                   reports: list[dict], counts, polygons: gpd.GeoDataFrame, metrics: dict | None,
                   timer: StepTimer, run_id: str, folder: Path) -> dict[str, Any]:
    summary = scenes.summary()
    grid = grid_summary(scenes.grid)
    before_time, after_time = scenes.before.records[0].datetime, scenes.after.records[0].datetime
    outputs = ["change.tif", "change_prob.tif", "changes.parquet", "preview.png", "change_prob.zarr"]
    windows_run = sum(r["windows"] for r in reports)
    return {
        "run_id": run_id,
        "flow_run_id": str(flow_run.get_id()) if flow_run.get_id() else None,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "run_folder": str(folder),
        "parameters": request.model_dump(),
        "region": {"name": region.name, "geometry": region.to_geojson(), "bbox": list(region.bbox)},
        "dates": {"before": request.before, "after": request.after,
                  "before_acquired": before_time, "after_acquired": after_time},
        "scenes": {**summary, "before_ids": list(scenes.before.ids), "after_ids": list(scenes.after.ids)},
        "grid": grid,
        "model": model.to_dict(),
        "blocks": {"total": len(plan.blocks), "computed": len(reports), "reused": len(plan.blocks) - len(reports),
                   "block_size": request.block_size, "reports": reports},
        "windows": {"scene": plan.windows, "run": windows_run},
        "pixels": {"total": grid["shape"][0] * grid["shape"][1], "observed": counts.observed_pixels,
                   "changed": counts.changed_pixels},
        "model_seconds": round(sum(r["model_seconds"] for r in reports), 3),
        "observed_km2": counts.observed_km2,
        "changed_km2": counts.changed_km2,
        "polygons": len(polygons),
        "metrics": metrics,
        "timings": timer.timings,
        "peak_rss_gb": timer.peak_rss_gb,
        "cpu_seconds": timer.cpu_seconds,
        "versions": package_versions(),
        "stac_item": stac_item(run_id, region.to_geojson(), list(region.bbox), grid, before_time, after_time, outputs,
                               {"dsqnet:model": model.name, "dsqnet:model_sha256": model.sha256,
                                "dsqnet:threshold": request.threshold}),
    }


def summary_text(manifest: dict) -> str:
    lines = [f"Outputs in {manifest['run_folder']}: change.tif, change_prob.tif, changes.parquet, preview.png, run.json",
             f"  changed: {manifest['changed_km2']:.4f} km2 in {manifest['polygons']} polygons "
             f"(observed {manifest['observed_km2']:.4f} km2)",
             f"  blocks: {manifest['blocks']['computed']} computed, {manifest['blocks']['reused']} reused"]
    if manifest["scenes"]["before"].get("collection_choice"):
        used = manifest["scenes"]["radiometry"]["before"][0]["collection"]
        lines.append(f"  collection: {used}, picked from several (run.json: scenes.before.collection_choice says why)")
    if manifest.get("metrics"):
        m = manifest["metrics"]
        lines.append(f"  against the truth: F1 {m['f1']:.3f}  IoU {m['iou']:.3f}  precision {m['precision']:.3f}  "
                     f"recall {m['recall']:.3f}")
    lines.append("  timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in manifest["timings"].items()))
    return "\n".join(lines)
