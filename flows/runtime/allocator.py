"""How glibc's allocator treats the memory a block frees: kept for the next block, not given back.

Every block allocates the same arrays afresh: its pixels read from ``scenes.zarr`` (tens of MB),
the chunks zarr decodes on the way, its window sums, its probabilities. By default glibc gives
each thread an arena of its own, takes arrays of more than a few MB straight from the kernel, and
returns them as soon as they are freed, or, in a thread's arena, as soon as one of its 64 MB heaps
is empty. The next block then page-faults the same amount in again and the kernel zeroes it: in
an 8192² run (bench/pipeline.py with the stand-in network) the flow's process took 330,000 page
faults and 5-6 s of system CPU. With one arena and thresholds above a block's arrays, the freed
memory stays in the heap and the next block reuses it: 107,000-145,000 faults, about 2 CPU s less
in the flow's process, and a peak 0.3 GB lower (bench/HISTORY.md, stop 29).

glibc reads these settings from the environment when a process starts (``child_environment``
gives them to the processes this code starts) or takes them through ``mallopt`` later
(``keep_freed_memory``). The arena count counts only for threads that have not allocated yet, so
``keep_freed_memory`` belongs at the very start of a process, before it has threads: the ``dsqnet``
command calls it first thing; a deployment's run gets them from its work pool's job variables
(prefect.yaml, ``keep_freed_memory``), which are where to change them for deployments. A user's
own ``MALLOC_*`` variables win, except that a Dask worker sets both thresholds whatever its
environment says, since Dask's nanny sets one of them itself
(``flows.workers.cluster.reuse_freed_memory``). Outside glibc (macOS, musl) nothing changes.
"""

from __future__ import annotations

import ctypes
import os
import platform
from functools import lru_cache

# The environment variables glibc reads at start, with what blocks are served best by: one arena
# (the main one grows by brk and is trimmed only past the trim threshold), no direct mmap below
# 256 MiB (a 2048 block's largest array is 32 MB, an 8192 block's 0.5 GB), and up to 1 GiB of free
# heap kept rather than trimmed.
KEEP_FREED = {"MALLOC_ARENA_MAX": 1, "MALLOC_MMAP_THRESHOLD_": 256 << 20, "MALLOC_TRIM_THRESHOLD_": 1 << 30}
# mallopt's parameter numbers for the same settings, from <malloc.h>
_MALLOPT = {"MALLOC_ARENA_MAX": -8, "MALLOC_MMAP_THRESHOLD_": -3, "MALLOC_TRIM_THRESHOLD_": -1}


def child_environment(environment: dict[str, str] | None = None) -> dict[str, str]:
    """``environment`` (default: this process's) with ``KEEP_FREED`` added where it sets nothing itself."""
    environment = dict(os.environ if environment is None else environment)
    return {**{name: str(value) for name, value in KEEP_FREED.items()}, **environment}


def keep_freed_memory(override: tuple[str, ...] = ()) -> dict[str, int]:
    """Set ``KEEP_FREED`` in this process, each setting unless its variable is in the environment
    (or is named in ``override``); returns what was set. Call it before the process starts threads."""
    libc = glibc()
    if libc is None:
        return {}
    chosen = {name: value for name, value in KEEP_FREED.items() if name in override or name not in os.environ}
    for name, value in chosen.items():
        libc.mallopt(_MALLOPT[name], value)
    return chosen


def release_freed_memory() -> None:
    """Hand the memory that this process freed but its allocator kept back to the OS (glibc only).

    Worth it where a block runs alone for seconds (a CPU worker), so that the process does not hold
    a block's worth of freed memory between blocks; not where two blocks share a GPU: there the
    partner is about to reuse what was freed, and trimming costs time at GPU speed.
    """
    libc = glibc()
    if libc is not None:
        libc.malloc_trim(0)


@lru_cache(maxsize=1)
def glibc() -> ctypes.CDLL | None:
    """This process's C library where it is glibc, whose allocator the calls above tune; else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL("libc.so.6")
