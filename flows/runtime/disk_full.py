"""A full disk, told in one sentence: where, how much space is left, about how much is needed, the fix.

    the disk is full at /data/runs: 12.0 MB left, about 310.5 MB needed (No space left on device,
    writing /data/runs/.cache/x/change_prob_window_sums/block-0-1.npy); free some space or ...

Each place that writes says what it needs and what the user can do (``DiskFull``); ``DiskFull.said``
turns any full-disk error raised inside it into a ``DiskFullError`` with that sentence.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flows.runtime.disk_signs import (
    FULL_ERRNOS,
    error_chain,
    file_written,
    free_bytes,
    full_disk_cause,
    gdal_write_failed,
    size_text,
)
from flows.runtime.user_errors import UserError

# A GDAL write failure is taken for a full disk below this much space when the need is not known.
LOW_SPACE = 64 << 20


class DiskFullError(UserError, OSError):
    """The disk (or a file size limit) is full where the work writes; the message says where, how much
    space is left, about how much is needed, and what to do."""

    def __str__(self) -> str:  # the sentence alone, without OSError's "[Errno 28]"
        return self.strerror or super().__str__()


class DiskFull:
    """What to say when the disk fills up under ``folder``: the space the work needs there (``need``,
    bytes, when known) and what the user can do (``fix``)."""

    def __init__(self, folder: str | Path, need: int | None = None,
                 fix: str = "free some space or choose another folder") -> None:
        self.folder, self.need, self.fix = Path(folder), need, fix

    def confirm(self, err: BaseException) -> bool:
        """Whether ``err`` is a full disk here: said so outright, or a GDAL write failure while the
        folder has less space left than needed."""
        if full_disk_cause(err) is not None:
            return True
        return gdal_write_failed(err) and free_bytes(self.folder) < (self.need or LOW_SPACE)

    def error(self, err: BaseException) -> DiskFullError:
        """The one-sentence error for ``err``, a full disk under ``folder``."""
        need = f", about {size_text(self.need)} needed" if self.need else ""
        cause = full_disk_cause(err) or f"{' '.join(str(err).split())}, with the disk nearly full"
        file = file_written(err)
        writing = f", writing {file}" if file else ""
        code = next((e.errno for e in error_chain(err) if isinstance(e, OSError) and e.errno in FULL_ERRNOS),
                    errno.ENOSPC)
        return DiskFullError(code, f"the disk is full at {self.folder.absolute()}: {size_text(free_bytes(self.folder))} "
                                   f"left{need} ({cause}{writing}); {self.fix}")

    @contextmanager
    def said(self) -> Iterator["DiskFull"]:
        """Turn a full disk met inside the block into ``DiskFullError``; other errors pass unchanged."""
        try:
            yield self
        except DiskFullError:
            raise
        except Exception as err:
            if self.confirm(err):
                raise self.error(err) from None
            raise
