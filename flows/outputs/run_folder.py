"""A run folder that appears whole or not at all, written by one run at a time.

Outputs are written into a hidden staging folder beside the final one; ``commit`` swaps it into
place. A failure anywhere before that removes the staging folder and leaves an earlier run folder
of the same name exactly as it was. ``run_lock`` keeps a second run of the same name out of the
run folder and its cache while the first one works.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TypeVar

from flows.files.locks import LockBusy, exclusive
from flows.runtime.disk_full import DiskFull, DiskFullError
from flows.runtime.user_errors import UserError

RequestT = TypeVar("RequestT")
ResultT = TypeVar("ResultT")

# About how many bytes the running flow writes under its output folder, once it knows (for a full disk's message).
_OUTPUT_BYTES: ContextVar[int | None] = ContextVar("output_bytes", default=None)


class OutputError(UserError, OSError):
    """The output folder cannot be written; the message says which folder and what to do."""

    def __str__(self) -> str:  # the sentence alone, without OSError's "[Errno 20]"
        return self.strerror or super().__str__()


class RunBusy(OutputError):
    """Another run of the same name is writing the run folder; the message names its process."""


@contextmanager
def run_lock(out: Path, name: str) -> Iterator[None]:
    """Hold ``<out>/.cache/<name>.lock`` while this run writes ``<out>/.cache/<name>/`` and ``<out>/<name>/``.

    A second run of the same name fails at once with ``RunBusy``, before it touches either folder,
    and says which process holds them; runs of other names into the same ``out`` go ahead.
    """
    with ExitStack() as held:
        try:
            held.enter_context(exclusive(out / ".cache" / f"{name}.lock"))
        except LockBusy as busy:
            raise RunBusy(f"run folder {out / name} is being written by {busy.held_by()}; wait for it to finish "
                          "or choose another --run-name (parameter 'run_name')") from None
        yield


def check_writable(folder: Path, what: str = "", option: str = "out", flow_parameter: bool = True) -> None:
    """Fail now, before hours of work, if ``folder`` cannot hold outputs (``what``, set with ``--option``,
    which is also the ``flow_parameter`` of that name)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        parameter = f" (parameter '{option}')" if flow_parameter else ""
        blocking = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
        reason = f"{blocking} is a file, not a folder" if blocking else err.strerror or str(err)
        raise OutputError(err.errno, f"cannot write {what + ' ' if what else ''}to {folder} ({reason}); "
                                     f"choose a writable folder with --{option}{parameter}") from None


def explain_os_error(err: OSError, where: Path) -> OutputError:
    """An OS error met while writing under ``where`` (not a full disk: ``DiskFull`` says that), in words
    that say where."""
    return OutputError(err.errno, f"writing under {where} failed: {err}")


def output_disk_full(out: Path, need: int | None = None) -> DiskFull:
    """What a full disk under the output folder means for a run: its earlier outputs stand, and a rerun
    resumes from the work already cached."""
    return DiskFull(out, need, fix="free some space or choose another --out. Earlier outputs of this run "
                                   "folder are untouched; a rerun resumes from the blocks already done.")


class RunFolder:
    def __init__(self, final: Path) -> None:
        self.final = final
        self.staging = final.with_name(f".{final.name}.partial-{uuid.uuid4().hex[:8]}")

    def __enter__(self) -> "RunFolder":
        self.staging.mkdir(parents=True)
        return self

    def __exit__(self, kind, value, traceback) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)  # gone after commit; a failed run's partial outputs

    def commit(self) -> Path:
        """Put the staged outputs at the final path, replacing an earlier run folder of that name."""
        previous = self.final.with_name(f".{self.final.name}.old-{uuid.uuid4().hex[:8]}")
        if self.final.exists():
            os.rename(self.final, previous)
        os.rename(self.staging, self.final)
        shutil.rmtree(previous, ignore_errors=True)
        return self.final


def link_tree(source: Path, target: Path) -> None:
    """Copy a folder by hard links where the filesystem allows (instant, no extra space), else by copying."""
    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link_or_copy)


def expect_output_bytes(nbytes: int) -> None:
    """Say about how many bytes the run inside ``with_output_errors`` writes under its output folder."""
    _OUTPUT_BYTES.set(int(nbytes))


def with_output_errors(run: Callable[[RequestT], ResultT], request: RequestT, out: Path) -> ResultT:
    """``run(request)``, with OS errors (a full disk, a folder vanishing) said in terms of the outputs
    (and of the space needed, as far as ``run`` said it with ``expect_output_bytes``)."""
    token = _OUTPUT_BYTES.set(None)
    try:
        return run(request)
    except (OutputError, DiskFullError):
        raise
    except Exception as err:
        disk = output_disk_full(out, _OUTPUT_BYTES.get())
        if disk.confirm(err):
            raise disk.error(err) from None
        if isinstance(err, OSError):
            raise explain_os_error(err, out) from None
        raise
    finally:
        _OUTPUT_BYTES.reset(token)
