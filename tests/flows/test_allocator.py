"""glibc keeps what a block frees for the next block: seen in a fresh process's resident memory."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from flows.runtime.allocator import KEEP_FREED, child_environment

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the settings are glibc's")

# A thread allocates 64 MB, touches every page and frees it, as a block's worker thread does with its
# pixels; the process reports how much of it is still resident, in MB, and what was set.
FREED_IN_A_THREAD = """
import json, sys, threading
import numpy as np
from flows.runtime.allocator import keep_freed_memory

chosen = keep_freed_memory() if sys.argv[1] == "keep" else {}

def resident_mb():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 2**20

def block():
    pixels = np.ones(64 << 20, np.uint8)
    del pixels

before = resident_mb()
thread = threading.Thread(target=block)
thread.start()
thread.join()
print(json.dumps({"kept_mb": resident_mb() - before, "chosen": chosen}))
"""


def run(mode: str, **environment: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", FREED_IN_A_THREAD, mode], capture_output=True, text=True,
                         check=True, env={**clean, **environment}, cwd=Path(__file__).resolve().parents[2])
    return json.loads(out.stdout)


def test_a_block_s_freed_memory_stays_for_the_next_only_with_the_settings():
    kept = run("keep")
    assert kept["chosen"] == KEEP_FREED
    assert kept["kept_mb"] > 56  # still the process's, to be reused
    assert run("default")["kept_mb"] < 8  # glibc's default: straight back to the kernel


def test_a_user_s_own_malloc_settings_win():
    mine = run("keep", MALLOC_MMAP_THRESHOLD_="131072")
    assert "MALLOC_MMAP_THRESHOLD_" not in mine["chosen"]
    assert mine["chosen"]["MALLOC_ARENA_MAX"] == 1
    assert mine["kept_mb"] < 8  # the user's threshold maps the array, and unmaps it when freed


def test_children_start_with_the_settings_unless_the_environment_has_its_own():
    assert child_environment({}) == {name: str(value) for name, value in KEEP_FREED.items()}
    assert child_environment({"MALLOC_ARENA_MAX": "4", "PATH": "/bin"})["MALLOC_ARENA_MAX"] == "4"
    assert child_environment({"PATH": "/bin"})["PATH"] == "/bin"
