"""What the command line prints while it works: the project's own lines, not the libraries' chatter.

By default a command shows its progress bars, the lines the project itself logs or prints (plain,
without Prefect's timestamp and run name; its warnings after ``warning: ``), and errors from anywhere. Prefect's
per-task INFO lines, Dask's cluster logs and warnings and rasterio's ``NotGeoreferencedWarning`` stay
out of the way. A user error is said once, by the command's own last line ``dsqnet <command>: error: ...``,
so Prefect's one-line reports of it (``flows.runtime.user_errors``) are left out of the terminal;
they still reach the Prefect API. ``--verbose`` shows everything, as the libraries log it.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, ExitStack
from pathlib import Path

from flows.runtime.terminal import progress_bars, show_progress_bars
from flows.runtime.user_errors import USER_ERROR_MARK

# The project's packages: a record logged (or printed in a flow) from code in these is the project's own.
_ROOT = Path(__file__).resolve().parents[2]
OWN_CODE = tuple(f"{_ROOT / package}/" for package in ("flows", "catalog", "dsqnet"))


def is_own(record: logging.LogRecord) -> bool:
    """Whether the record was logged from the project's own code (Prefect records a flow's prints at the
    line that printed)."""
    return record.pathname.startswith(OWN_CODE)


class LibraryLines(logging.Filter):
    """On a library's terminal handler: warnings and errors only, not the project's own lines below
    errors (shown plain by ``OwnLines``), not a user error (the command says it), nor Prefect's
    "Finished in state"."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, USER_ERROR_MARK, False) or is_own(record) and record.levelno < logging.ERROR:
            return False
        if record.name.startswith("prefect") and str(record.msg).startswith("Finished in state"):
            return False
        return record.levelno >= logging.WARNING


class OwnLines(logging.Filter):
    """On the plain handler: the project's own lines below errors, a warning as ``warning: ...``. They
    are shown here, not left to Prefect's console handler, which a quiet command's flows run without
    (an alert whose webhook failed went unsaid)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return is_own(record) and record.levelno < logging.ERROR and not getattr(record, USER_ERROR_MARK, False)


class OwnFormat(logging.Formatter):
    """The message alone, a warning's after ``warning: ``."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"warning: {text}" if record.levelno >= logging.WARNING else text


def terminal_handlers() -> list[logging.Handler]:
    """Every handler that writes to a stream rather than a file (Prefect's console handler, ...)."""
    loggers = [logging.getLogger(), *(lg for lg in logging.root.manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger))]
    return [h for lg in loggers for h in lg.handlers
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]


class NoDrainNotes(logging.Filter):
    """Drops "Still processing items: N items remaining...": Prefect's log and event workers say it
    while they send what is left to the API at exit, after the command's last line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Still processing items")


# Prefect's services log under their class names, with no handler but Python's last resort
_PREFECT_SERVICES = ("APILogWorker", "EventsWorker")


@contextmanager
def console(verbose: bool, uses_prefect: bool) -> Iterator[None]:
    """The terminal of one command: quiet (the default) or ``verbose``. ``uses_prefect``: the command
    runs a flow, so Prefect (whose import sets up its handlers) is imported first."""
    bars = progress_bars()
    show_progress_bars(True)
    try:
        if verbose:
            yield
            return
        with ExitStack() as stack:
            stack.enter_context(warnings.catch_warnings())
            from rasterio.errors import NotGeoreferencedWarning

            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            warnings.filterwarnings("ignore", module=r"distributed\.")  # "Port 8787 is already in use", ...
            for service in _PREFECT_SERVICES:  # kept past the command: the workers drain at exit
                if not any(isinstance(f, NoDrainNotes) for f in logging.getLogger(service).filters):
                    logging.getLogger(service).addFilter(NoDrainNotes())
            # a reader listing scenes.zarr while a failed load removes it: the load's own error follows
            warnings.filterwarnings("ignore", message=r"Object at .* is not recognized as a component of a Zarr")
            # Dask's worker processes log on their own terminal handler: errors only, unless --verbose
            stack.enter_context(_environment(DASK_LOGGING__DISTRIBUTED="error"))
            if uses_prefect:
                import prefect  # noqa: F401  (configures Prefect's logging, and so its console handler)
            stack.enter_context(_quiet_logging())
            yield
    finally:
        show_progress_bars(bars)


@contextmanager
def _environment(**values: str) -> Iterator[None]:
    """Set environment variables (for the processes the command starts) unless the user set them."""
    added = {k: v for k, v in values.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


@contextmanager
def _quiet_logging() -> Iterator[None]:
    library = LibraryLines()
    handlers = terminal_handlers()
    for handler in handlers:
        handler.addFilter(library)
    own = logging.StreamHandler(sys.stderr)
    own.setFormatter(OwnFormat("%(message)s"))
    own.addFilter(OwnLines())
    root = logging.getLogger()
    root.addHandler(own)
    try:
        yield
    finally:
        root.removeHandler(own)
        for handler in handlers:
            handler.removeFilter(library)
