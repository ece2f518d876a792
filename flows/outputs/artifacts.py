"""What a run shows in the Prefect UI: a summary, the largest changes, and progress while it infers
(also as a bar on the terminal, when the command line runs it)."""

from __future__ import annotations

import time

import geopandas as gpd
from tqdm import tqdm
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from flows.runtime.terminal import progress_bars

LARGEST = 10


class Progress:
    """A progress artifact that follows the work (blocks, pairs) as it finishes, and where the command
    line runs it, a bar on stderr: done of ``total`` ``unit``s, the windows per second, and an ETA."""

    def __init__(self, total: int, description: str, key: str = "detect-progress", unit: str = "block") -> None:
        self.total = max(total, 1)
        self.done = 0
        self.windows = 0
        self.started = time.perf_counter()
        self.id = create_progress_artifact(progress=0.0, key=key, description=description)
        self.bar = tqdm(total=total, unit=unit, desc=f"{unit}s", disable=not progress_bars(), dynamic_ncols=True,
                        leave=True)

    def advance(self, windows: int | None = None) -> None:
        """One more done; ``windows``: how many network windows it ran (for the bar's windows/s)."""
        self.done += 1
        update_progress_artifact(self.id, progress=100.0 * self.done / self.total)
        if windows is not None:
            self.windows += windows
            rate = self.windows / max(time.perf_counter() - self.started, 1e-9)
            self.bar.set_postfix_str(f"{rate:.1f} windows/s", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def publish_artifacts(manifest: dict, polygons: gpd.GeoDataFrame) -> None:
    scenes = manifest["scenes"]
    timings = " | ".join(f"{step} {seconds:.1f} s" for step, seconds in manifest["timings"].items())
    metrics = manifest.get("metrics")
    lines = [
        f"# Changes in {manifest['region']['name']}: {manifest['dates']['before']} → {manifest['dates']['after']}",
        "",
        f"- **changed area:** {manifest['changed_km2']:.4f} km² in **{manifest['polygons']} polygons** "
        f"(threshold {manifest['parameters']['threshold']}, min area {manifest['parameters']['min_area_m2']} m²)",
        f"- **observed in both dates:** {manifest['observed_km2']:.4f} km²",
        f"- **scenes:** before {', '.join(scenes['before_ids'])}; after {', '.join(scenes['after_ids'])}",
        f"- **model:** {manifest['model']['name']} {manifest['model']['version']} (sha256 {manifest['model']['sha256'][:12]})",
        f"- **blocks:** {manifest['blocks']['computed']} computed, {manifest['blocks']['reused']} reused",
        f"- **timings:** {timings}",
        f"- **outputs:** `{manifest['run_folder']}`",
    ]
    if metrics:
        lines.append(f"- **against the truth:** F1 {metrics['f1']:.3f}, IoU {metrics['iou']:.3f}, "
                     f"precision {metrics['precision']:.3f}, recall {metrics['recall']:.3f}")
    create_markdown_artifact("\n".join(lines), key="detect-summary", description="detect-changes summary")
    rows = [
        {"rank": k + 1, "area_m2": round(r.area_m2, 1), "prob_mean": round(r.prob_mean, 3),
         "prob_max": round(r.prob_max, 3), "observed_fraction": round(r.observed_fraction, 3),
         "centroid": f"{r.geometry.centroid.x:.1f}, {r.geometry.centroid.y:.1f}"}
        for k, r in enumerate(polygons.head(LARGEST).itertuples())
    ]
    create_table_artifact(rows, key="largest-changes", description=f"the {LARGEST} largest changes ({polygons.crs})")
