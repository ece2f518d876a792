"""Exclusive locks between processes that can say who holds them.

Every lock of the flows (a detect run's folder, a watched region's state, the model registry) is a
``filelock`` lock on a file: the kernel's ``flock``, so a process that dies, however it dies,
drops its locks, and a crash never leaves anything locked. Whoever takes a lock writes its owner
(process id, host, start time, command) into the lock file, so a process that finds the lock
taken can name the other one in its message. The lock needs a filesystem where ``flock`` works
across the processes that share it (local disks; NFSv4 and most cluster filesystems).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import filelock


@dataclass(frozen=True)
class LockOwner:
    """The process that holds a lock."""

    pid: int
    host: str
    started: str  # when it took the lock, ISO 8601 in UTC
    command: str

    def describe(self) -> str:
        """``pid 1234 on host, started 05:40 UTC`` (with the date when it was not today)."""
        try:
            when = dt.datetime.fromisoformat(self.started)
            today = dt.datetime.now(dt.UTC).date()
            started = f"{when:%H:%M} UTC" if when.date() == today else f"{when:%Y-%m-%d %H:%M} UTC"
        except ValueError:
            started = self.started
        return f"pid {self.pid} on {self.host}, started {started}"

    def is_gone(self) -> bool:
        """Whether this owner is a process of this host that no longer exists."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # another user's process
            return False
        return False


class LockBusy(Exception):
    """Another process holds the lock; ``owner`` is who, where the lock file says so."""

    def __init__(self, path: Path, owner: LockOwner | None) -> None:
        self.path, self.owner = path, owner
        super().__init__(f"{path} is held by {owner.describe() if owner else 'another process'}")

    def held_by(self, who: str = "another dsqnet run") -> str:
        """``another dsqnet run (pid 1234 on host, started 05:40 UTC)``, or as much of it as is known."""
        return f"{who} ({self.owner.describe()})" if self.owner else who


def this_process() -> LockOwner:
    return LockOwner(pid=os.getpid(), host=socket.gethostname(),
                     started=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                     command=" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "python")


@contextmanager
def exclusive(path: str | Path, wait: float = 0.0) -> Iterator[LockOwner]:
    """Hold the lock on ``path`` (created if missing) for the block; yields this process's owner record.

    Waits up to ``wait`` seconds for another holder to let go, then raises ``LockBusy`` naming it.
    Within one process, two ``exclusive`` blocks on the same path exclude each other too.
    OS errors (a folder that cannot be written) propagate as they are.
    """
    path = Path(path)
    owner = this_process()
    record = (json.dumps(asdict(owner)) + "\n").encode()

    def write_owner(fd: int) -> None:
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)

    lock = filelock.FileLock(path, timeout=wait, thread_local=False, on_acquired=write_owner)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise LockBusy(path, read_owner(path)) from None
    try:
        yield owner
    finally:
        lock.release()


def read_owner(path: str | Path, patience: float = 0.5) -> LockOwner | None:
    """The owner recorded in the lock file ``path``, or None when it cannot be told.

    A holder writes its record a moment after taking the lock, so a record that is missing, torn or
    names a process of this host that is gone is read again for up to ``patience`` seconds.
    """
    deadline = time.monotonic() + patience
    while True:
        try:
            owner = LockOwner(**json.loads(Path(path).read_text()))
            if not owner.is_gone():
                return owner
        except (OSError, ValueError, TypeError):
            pass
        if time.monotonic() > deadline:
            return None
        time.sleep(0.02)
