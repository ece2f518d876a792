"""The one line a command ends with when it fails for a reason the user can fix."""

from __future__ import annotations

from pathlib import Path

from flows.runtime.disk_full import DiskFull, DiskFullError
from flows.runtime.disk_signs import file_written, is_disk_full
from flows.runtime.user_errors import is_user_error


def user_message(err: BaseException) -> str | None:
    """The message to print for ``err``, or ``None`` for a bug (which keeps its traceback).

    User errors (``flows.runtime.user_errors``) say what to do; so do the ``ValueError``s and
    ``OSError``s that the commands raise for bad input and unwritable output. A full disk that no
    step put in words yet is said here, at the folder of the file being written.
    """
    if is_disk_full(err) and not isinstance(err, DiskFullError):
        file = file_written(err)
        return str(DiskFull(Path(file).parent if file else Path.cwd()).error(err))
    if is_user_error(err) or isinstance(err, (ValueError, OSError)):
        return str(err)
    return None
