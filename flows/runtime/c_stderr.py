"""What C libraries print straight onto the process's stderr, held back while the outcome is open.

libtiff, under GDAL, reports a failed write by printing to file descriptor 2 itself, past Python's
``sys.stderr`` and logging: a full disk shows as ``_tiffWriteProc: No space left on device.``,
three times, above the command's own one-line error. Inside ``c_stderr_held`` those lines go to a
temporary file instead; they are printed when the block succeeds (a warning of the library's still
reaches the user), and when it fails they become a note of its exception (``__notes__``), where the
code that says the error can read them (flows/runtime/disk_signs.py) and a traceback shows them.
The descriptor is the process's, so this is for short single-threaded steps such as writing a file.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def c_stderr_held() -> Iterator[None]:
    try:
        held = tempfile.TemporaryFile()
    except OSError:  # nowhere to hold them (a full temporary folder): the lines stay where they go
        yield
        return
    with held:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException as err:
            if text := _restore(saved, held):
                err.add_note(text.decode(errors="replace").strip())
            raise
        if text := _restore(saved, held):
            os.write(2, text)


def _restore(saved: int, held) -> bytes:
    """Put the real stderr back; returns what was held."""
    os.dup2(saved, 2)
    os.close(saved)
    held.seek(0)
    return held.read()
