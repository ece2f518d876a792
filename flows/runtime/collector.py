"""Python's cycle collector told once that what the imports made lives as long as the process.

By the time a run starts, torch, Prefect, Dask, zarr, GDAL's bindings and pydantic's models hold
over half a million objects that are never garbage (566,000 the collector tracks once
``flows.detect`` is imported). The collector's full passes still walk them all
whenever enough new objects have survived: in an 8192² run (bench/pipeline.py with the stand-in
network) the one such pass inside the flow took 0.43 s of the flow's CPU, and 0.03 s with them
frozen (bench/HISTORY.md, stop 31). ``gc.freeze`` moves every object then tracked out of the
collector's generations, so later passes walk only what the run itself makes.

Objects frozen are never collected. That is why this runs once per process, at its first run:
garbage left by one run must not be frozen by the next one's start, as it would be in a worker
process that serves many runs.
"""

from __future__ import annotations

import gc
from functools import cache


@cache
def freeze_loaded_objects() -> int:
    """Leave everything the process holds now out of the collector's passes; once per process.
    Returns how many objects that was."""
    gc.freeze()
    return gc.get_freeze_count()
