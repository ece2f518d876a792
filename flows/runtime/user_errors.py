"""Expected failures are told in one line: the project's error classes, and how Prefect logs them.

A *user error* is a problem the user can fix with the inputs, the parameters or the machine: a
region that is not one, a truncated asset, a file that is not a model, a folder that cannot be
written, a full disk. Its message names the input at fault, what is wrong with it and the fix, and
a traceback would only bury that line. Everything else is a bug and keeps its traceback.

The flows' own error classes derive from ``UserError``; ``catalog`` and ``dsqnet`` cannot import
``flows``, so their error classes (``CatalogError``, ``CheckpointError``, ``DatasetError``) are
named in ``user_error_types`` instead, and a full disk counts wherever it is raised
(``flows.runtime.disk_signs``). Test with ``is_user_error``, or ``except user_error_types()``.

Prefect logs a failed task or flow run with the exception's traceback. ``OneLineUserErrors``, a
filter on Prefect's run and engine loggers, drops the traceback of a user error and keeps its
message, so the log (terminal and UI) says it in one line; the run is still marked Failed with that
message. ``flows`` installs it when imported, so it holds for the command line, for flows called
from Python and for deployments alike.
"""

from __future__ import annotations

import logging

from flows.runtime.disk_signs import is_disk_full

# The loggers through which Prefect reports a failed task run, flow run, or flow-run process.
PREFECT_FAILURE_LOGGERS = ("prefect.task_runs", "prefect.flow_runs", "prefect.engine")
# Set on a log record whose user error was made one line (a console may leave it to the caller to say).
USER_ERROR_MARK = "dsqnet_user_error"


class UserError(Exception):
    """A problem the user can fix; the message names the input at fault, what is wrong, and the fix."""


def numbered(problems: list[str]) -> str:
    """Several problems on one line, numbered, so that a user fixes them all in one go and the
    message stays the one last line of the output."""
    return "; ".join(f"({k}) {problem}" for k, problem in enumerate(problems, 1))


def user_error_types() -> tuple[type[BaseException], ...]:
    """Every class of user error. ``catalog`` and ``dsqnet`` are imported on first use only, so that
    ``dsqnet --help`` does not wait for torch."""
    from catalog.errors import CatalogError
    from dsqnet.data.layouts import DatasetError
    from dsqnet.weights.files import CheckpointError

    return (UserError, CatalogError, CheckpointError, DatasetError)


def is_user_error(err: BaseException) -> bool:
    """Whether ``err`` is a user error (of a class in ``user_error_types``, or a full disk)."""
    return isinstance(err, user_error_types()) or is_disk_full(err)


class OneLineUserErrors(logging.Filter):
    """Log a user error as its message alone: no traceback, ``Class: message`` instead of its repr."""

    def filter(self, record: logging.LogRecord) -> bool:
        err = record.exc_info[1] if record.exc_info else None
        if err is None or not is_user_error(err):
            return True
        message, said = record.getMessage(), f"{type(err).__name__}: {err}"
        record.msg = message.replace(repr(err), said) if repr(err) in message else f"{message}: {said}"
        record.args = None
        record.exc_info = record.exc_text = None
        setattr(record, USER_ERROR_MARK, True)
        return True


def install_one_line_user_errors() -> None:
    """Put ``OneLineUserErrors`` on Prefect's failure loggers (once). It needs no Prefect import, and
    Prefect's own logging setup keeps filters already on its loggers."""
    for name in PREFECT_FAILURE_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, OneLineUserErrors) for f in logger.filters):
            logger.addFilter(OneLineUserErrors())
