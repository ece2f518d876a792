"""A run's cache (``<out>/.cache/<run>``: scenes.zarr, change_prob.zarr, the blocks' sums) found
damaged is said in one line that names the folder to remove.

A rerun reuses what an earlier run of the same work left, which is what makes a killed run resume.
A chunk cut short by a crash of the machine, a disk error, or a hand that edited the folder, then
fails deep inside zarr or its codecs (``error during blosc decompression: -1``, ``KeyError:
'image'``, a JSON error in a ``zarr.json``): a traceback, or a line that names no file and no fix.
The fix is always the same, to remove the folder so that the run computes it afresh.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flows.runtime.user_errors import UserError, is_user_error

# the packages that read the stores: an error raised inside them is about what they read
_STORE_READERS = re.compile(r"[/\\]site-packages[/\\](zarr|numcodecs)[/\\]")
# a codec's words for bytes it cannot decode, also where a child process passed on only its message
_UNDECODABLE = re.compile(r"blosc|zstd|lz4|error during \w* ?decompression|while decompressing", re.IGNORECASE)


class DamagedCache(UserError):
    """A run's cache cannot be read as written; the message names the folder to remove."""


def is_damaged_store(err: BaseException) -> bool:
    """Whether ``err`` says that a store could not be read as written: a codec that cannot decode a
    chunk, or a member or metadata missing or garbled, raised inside zarr or numcodecs. An OS error
    (a full disk, a folder that cannot be written) is not one: it has its own line."""
    for cause in _chain(err):
        if isinstance(cause, OSError):
            return False
        if isinstance(cause, (KeyError, ValueError, RuntimeError)):
            if _UNDECODABLE.search(str(cause)) or _raised_in_store_reader(cause):
                return True
    return False


@contextmanager
def said_if_damaged(cache: Path) -> Iterator[None]:
    """Inside, an error that ``is_damaged_store`` raises ``DamagedCache`` naming ``cache``; any
    other error passes as it is."""
    try:
        yield
    except Exception as err:
        if is_user_error(err) or not is_damaged_store(err):
            raise
        said = str(err).strip() or type(err).__name__
        raise DamagedCache(f"the run's cache {cache} is damaged ({type(err).__name__}: {said}): remove that folder "
                           "and run again, which computes it afresh") from None


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _raised_in_store_reader(err: BaseException) -> bool:
    """Raised while zarr or numcodecs read: a missing member, or a ``zarr.json`` that is no JSON
    (raised in ``json``, called from zarr)."""
    return any(_STORE_READERS.search(frame.filename) for frame in traceback.extract_tb(err.__traceback__))
