"""How libraries say that a disk is full, and how much space is left.

Python and pyarrow raise ``OSError`` with ``ENOSPC`` (no space), ``EDQUOT`` (quota) or ``EFBIG``
(a file size limit, e.g. ``ulimit -f``). numpy's ``np.save`` raises an ``OSError`` without an
errno: "1048576 requested and 408544 written". GDAL (rasterio) says only "Write error" or "Write
failed" (``gdal_write_failed``): libtiff's own words below it, where they were kept as a note of the
error, say whether the disk was full, else it must be judged from the space left.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path

from catalog.errors import error_chain  # noqa: F401 - part of this module's vocabulary (flows/runtime/disk_full.py)

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_SHORT_WRITE = re.compile(r"(\d+) requested and (\d+) written")  # numpy, errno None
_GDAL_WRITE = re.compile(r"write (error|failed)|No space left on device|Disk quota exceeded|File too large",
                         re.IGNORECASE)


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` (or an exception it was raised from) says that a disk or a file size limit is full."""
    return full_disk_cause(err) is not None


def full_disk_cause(err: BaseException) -> str | None:
    """What the library said about the full disk, in words (``None``: it did not say the disk is full)."""
    for e in error_chain(err):
        if not isinstance(e, OSError):
            continue
        if e.errno == errno.EFBIG:
            return "File too large: a file size limit such as `ulimit -f`"
        if e.errno in FULL_ERRNOS:
            return os.strerror(e.errno)
        short = _SHORT_WRITE.search(str(e)) if e.errno is None else None
        if short:
            return f"a write stopped after {size_text(int(short[2]))} of {size_text(int(short[1]))}"
        said = next((code for code in FULL_ERRNOS for note in getattr(e, "__notes__", ()) if os.strerror(code) in note), None)
        if said is not None:  # GDAL's error says "Write failed"; libtiff, below it, said why (flows/runtime/c_stderr.py)
            return "File too large: a file size limit such as `ulimit -f`" if said == errno.EFBIG else os.strerror(said)
    return None


def gdal_write_failed(err: BaseException) -> bool:
    """Whether ``err`` is a GDAL write failure, which does not say whether the disk was full."""
    return any(type(e).__module__.startswith("rasterio") and _GDAL_WRITE.search(str(e)) for e in error_chain(err))


def file_written(err: BaseException) -> str | None:
    """The file being written when ``err`` was raised, where the error names it."""
    return next((str(e.filename) for e in error_chain(err) if isinstance(e, OSError) and e.filename), None)


def free_bytes(folder: str | Path) -> int:
    """The space left to this user on the filesystem of ``folder`` (or of its nearest existing parent)."""
    path = Path(folder).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 0


def size_text(nbytes: int) -> str:
    """``1.5 MB``, ``870 kB``, ``0 B``: decimal units, as ``df -H`` prints them."""
    value = float(nbytes)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit in ("B", "kB") else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"
