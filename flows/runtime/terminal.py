"""Whether this process reports to a person at a terminal, or runs unattended.

The command line turns progress bars on; a flow called from Python or run by a deployment's worker
leaves them off, so worker logs hold log lines, not a bar redrawn a hundred times.
"""

from __future__ import annotations

_progress_bars = False


def show_progress_bars(on: bool = True) -> None:
    """Draw progress bars on stderr from now on (``on``) or not."""
    global _progress_bars
    _progress_bars = on


def progress_bars() -> bool:
    """Whether progress bars are drawn (``show_progress_bars``)."""
    return _progress_bars


def progress_bar_open() -> bool:
    """Whether a tqdm bar is on the terminal (its line has no end yet): a line printed now starts
    on a line of its own only after a newline. A run that fails leaves its bar open."""
    import sys

    tqdm = sys.modules.get("tqdm")
    return bool(tqdm is not None and getattr(tqdm.tqdm, "_instances", None))
