"""``run.json``: everything needed to trust, repeat or trace a run, with a STAC Item of its outputs."""

from __future__ import annotations

import datetime as dt
import sys
import time
from collections.abc import Callable

import pystac

PROJECTION_EXTENSION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
FILE_MEDIA = {
    "change.tif": (pystac.MediaType.COG, ["data"], "change: 0 unchanged, 1 changed, 255 not observed"),
    "change_prob.tif": (pystac.MediaType.COG, ["data"], "probability of change (NaN: not observed)"),
    "changes.parquet": ("application/vnd.apache.parquet", ["data"], "change polygons (GeoParquet)"),
    "preview.png": (pystac.MediaType.PNG, ["overview"], "before | after | change"),
    "change_prob.zarr": ("application/vnd+zarr", ["data"], "probability mosaic (zarr v3)"),
}


def stac_item(run_id: str, geometry: dict, bbox: list[float], grid: dict, start: str, end: str,
              outputs: list[str], properties: dict) -> dict:
    """A STAC Item for the run's outputs (relative hrefs: the folder can be moved as a whole)."""
    item = pystac.Item(
        id=run_id, geometry=geometry, bbox=bbox, datetime=None,
        start_datetime=dt.datetime.fromisoformat(start), end_datetime=dt.datetime.fromisoformat(end),
        properties={"proj:code": grid["crs"], "proj:shape": grid["shape"], "proj:transform": grid["transform"],
                    **properties},
        stac_extensions=[PROJECTION_EXTENSION],
    )
    for name in outputs:
        media, roles, title = FILE_MEDIA[name]
        key = name.replace(".zarr", "_zarr").split(".")[0]
        item.add_asset(key, pystac.Asset(href=f"./{name}", media_type=media, roles=roles, title=title))
    return item.to_dict(include_self_link=False, transform_hrefs=False)


class StepTimer:
    """Seconds per step of a run, for ``run.json`` and the summaries: ``lap(name)`` closes a step.

    Beside the seconds it keeps this process's peak resident memory as each step ends (it only
    grows), so the step that set a run's peak is the first to show it, and the CPU seconds each step
    took (``cpu_seconds``): ``process``, every thread of this process, and ``children``, the child
    processes that ended during the step (the block outputs' writers). Workers in processes of
    their own are in neither; the default single local worker is in ``process``. Other work in the
    same process at the same time (another flow run) is counted too.
    """

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self.peak_rss_gb: dict[str, float] = {}
        self.cpu_seconds: dict[str, dict[str, float]] = {}
        self._clock = time.perf_counter()
        self._cpu = cpu_seconds()

    def lap(self, step: str) -> None:
        now, cpu = time.perf_counter(), cpu_seconds()
        self.timings[step] = round(now - self._clock, 3)
        peak = peak_rss_gb()
        if peak is not None:
            self.peak_rss_gb[step] = peak
        if cpu is not None and self._cpu is not None:
            self.cpu_seconds[step] = {"process": round(cpu[0] - self._cpu[0], 3),
                                      "children": round(cpu[1] - self._cpu[1], 3)}
        self._clock, self._cpu = now, cpu


class FinishTimes:
    """Seconds from one start to the end of each of several steps that run at once: which held the others up."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._start = time.perf_counter()

    def mark(self, step: str) -> None:
        self.seconds[step] = round(time.perf_counter() - self._start, 3)

    def on_done(self, step: str) -> Callable[[object], None]:
        """A done-callback for a future that marks ``step``."""
        return lambda _future: self.mark(step)


def cpu_seconds() -> tuple[float, float] | None:
    """CPU seconds (user and system) so far of this process's threads and of its ended children
    (None where the OS does not say)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def peak_rss_gb() -> float | None:
    """This process's peak resident memory so far, in GB (None where the OS does not say)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
    return round(peak / (2**30 if sys.platform == "darwin" else 2**20), 3)
