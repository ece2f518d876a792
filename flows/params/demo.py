"""The embedded default run: the demo catalog (built once, then reused) and the demo model.

``dsqnet detect`` with no region and dates, and the ``detect-changes`` deployment's default
parameters, run on this: a synthetic town whose true change is known, so the run also reports how
well it found it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from catalog.demo import REGION_NAME, build_demo

from flows.files.atomic import written_aside
from flows.files.locks import exclusive
from flows.params.detect import DEMO_AFTER, DEMO_BEFORE

MANIFEST = "demo.json"
DEMO_WAIT_S = 600.0  # how long a run waits for another that is writing the demo data


@dataclass(frozen=True)
class DemoInputs:
    catalog: str
    regions: str
    region: str
    before: str
    after: str
    truth: str  # the true change of (before, after) as GeoParquet polygons


def demo_inputs(folder: Path, seed: int = 0) -> DemoInputs:
    """The demo catalog under ``folder`` (written on first use, atomically), for the default date pair.

    Runs started together share it: the first writes it, the others wait for it.
    """
    manifest = folder / MANIFEST
    if not manifest.is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        with exclusive(folder.with_name(f"{folder.name}.lock"), wait=DEMO_WAIT_S):
            if not manifest.is_file():  # not written meanwhile by the run that held the lock
                _write_demo(folder, seed)
    data = json.loads(manifest.read_text())
    return DemoInputs(
        catalog=str(folder / data["catalog"]), regions=str(folder / data["regions"]), region=data.get("region", REGION_NAME),
        before=DEMO_BEFORE, after=DEMO_AFTER, truth=str(folder / data["truth"][f"{DEMO_BEFORE}_{DEMO_AFTER}"]),
    )


def _write_demo(folder: Path, seed: int) -> None:
    with written_aside(folder) as tmp:
        demo = build_demo(tmp, seed=seed)
        truth = {f"{a}_{b}": str(table.relative_to(tmp)) for (a, b), (_, table) in demo.truth.items()}
        (tmp / MANIFEST).write_text(json.dumps({
            "seed": seed, "catalog": str(demo.catalog.relative_to(tmp)), "regions": str(demo.regions.relative_to(tmp)),
            "region": demo.region_name, "dates": list(demo.dates), "truth": truth,
        }, indent=2))
