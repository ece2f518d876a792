"""Files and folders that appear whole or not at all: written aside, then renamed into place.

Every output, record and cache of the flows goes through ``written_aside``: the work happens on a
hidden temporary path beside the final one (same folder, so the rename stays on one filesystem
and is atomic on POSIX), is flushed to disk, and only then takes the final name. A reader sees
the old version or the new one; a crash or an error (a full disk, say) leaves the final path as
it was and removes the temporary one.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def aside_path(path: Path) -> Path:
    """A hidden, unique temporary name beside ``path`` that keeps its suffix (GDAL picks drivers by it)."""
    return path.with_name(f".{path.stem}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}{path.suffix}")


@contextmanager
def written_aside(path: str | Path, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write a file or a folder at; on success it becomes ``path``.

    ``replace=False`` keeps an existing ``path`` for a folder only: the new one is then dropped
    (another process made it first). Files always replace the old version.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = aside_path(path)
    try:
        yield tmp
        if tmp.is_dir():
            if path.exists():
                if not replace:
                    return
                shutil.rmtree(path)
            tmp.rename(path)
        else:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        tmp.with_name(tmp.name + ".aux.xml").unlink(missing_ok=True)  # GDAL's side file, if it wrote one


def write_text_atomic(path: str | Path, text: str) -> Path:
    """``text`` at ``path``, whole or not at all."""
    with written_aside(path) as tmp:
        tmp.write_text(text)
    return Path(path)
