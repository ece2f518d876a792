"""A registry writer in a process of its own, for the concurrency tests.

    python -m tests.flows.registry_writer ROOT MODEL_FILE WRITER COUNT [GO_FILE]

Waits for GO_FILE (so that several writers start together), then COUNT times (forever if COUNT < 0):
registers MODEL_FILE as the next version of ``shared``, points ``writer-WRITER`` and ``production``
at it, and adds metrics to its record; prints each new version number as it goes.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from flows.models.registry import ModelRegistry

NAME = "shared"


def main(argv: list[str]) -> None:
    root, model, writer, count = argv[0], argv[1], argv[2], int(argv[3])
    go = Path(argv[4]) if len(argv) > 4 else None
    while go is not None and not go.exists():
        time.sleep(0.005)
    registry = ModelRegistry(root)
    i = 0
    while count < 0 or i < count:
        version = registry.register(model, name=NAME, lineage={"writer": writer, "i": i}).version
        registry.promote(NAME, version, f"writer-{writer}")
        registry.promote(NAME, version, "production")
        registry.set_metrics(NAME, version, {f"by-{writer}": i})
        print(version, flush=True)
        i += 1


if __name__ == "__main__":
    main(sys.argv[1:])
