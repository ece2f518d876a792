"""What a monitor remembers between runs, per region, in ``<state>/<region>/``:

- ``state.json``: the last acquisition processed and the pairs done so far. Written atomically
  (aside, then ``os.replace``) and only *after* the pair's polygons are in the history.
- ``history.parquet``: every change polygon found so far, as GeoParquet. Rows are keyed by
  ``pair_key`` (region, before and after date): writing a pair replaces that pair's rows, so a
  pair processed again, after a crash between the history and the state write, is never counted
  twice. Also written aside and renamed into place.
- ``.lock``: an exclusive lock (flows/files/locks.py) held while a run works on the region. A
  deployment's ``concurrency_limit=1`` already keeps runs apart; the lock also covers a
  hand-started ``dsqnet monitor`` or a second deployment watching the same state folder. The
  kernel drops it when the process dies, so a crash never leaves a region locked.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Self

import geopandas as gpd
import pandas as pd

STATE_VERSION = 1

from flows.files.atomic import written_aside
from flows.files.locks import LockBusy, exclusive
from flows.runtime.disk_full import DiskFull
from flows.runtime.user_errors import UserError


class StateError(UserError, ValueError):
    """A region's state cannot be trusted; the message names the file, what is wrong and the fix."""


class RegionBusy(RuntimeError):
    """Another run holds the region's lock."""


@dataclass(frozen=True)
class RegionState:
    region: str
    geometry_sha256: str
    last_acquisition: str | None = None
    pairs: tuple[dict, ...] = field(default_factory=tuple)
    updated: str | None = None

    def to_dict(self) -> dict:
        return {"version": STATE_VERSION, **asdict(self), "pairs": list(self.pairs)}

    def starting_at(self, day: str) -> RegionState:
        """A first run's state when only one acquisition exists yet: the next one is compared with it."""
        return replace(self, last_acquisition=day, updated=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))

    def after(self, pair: dict) -> RegionState:
        """The state once ``pair`` is done: its after date is now the last acquisition processed."""
        return replace(self, last_acquisition=pair["after"], pairs=(*self.pairs, pair),
                       updated=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))


def geometry_hash(wkb: bytes) -> str:
    return hashlib.sha256(wkb).hexdigest()


def pair_key(region: str, before: str, after: str) -> str:
    """The history's row key: one pair of acquisitions of one region."""
    return f"{region}|{before}|{after}"


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """``write`` a file beside ``path``, flush it to disk, then rename it over ``path`` in one step.

    Readers see the old file or the new one, never half of either; a crash leaves only a hidden
    ``.*.partial-*`` file that the next write ignores.
    """
    with written_aside(path) as tmp:
        write(tmp)


class RegionStore:
    """The files of one watched region under ``<state>/<slug>/``."""

    def __init__(self, root: Path, slug: str) -> None:
        self.folder = Path(root) / slug
        self.state_path = self.folder / "state.json"
        self.history_path = self.folder / "history.parquet"
        self.lock_path = self.folder / ".lock"
        self._lock = ExitStack()

    # -- lock -------------------------------------------------------------------------------------
    def __enter__(self) -> Self:
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.enter_context(exclusive(self.lock_path))
        except LockBusy as busy:
            raise RegionBusy(f"{self.folder} is being processed by {busy.held_by('another run')}; skipped") from None
        return self

    def __exit__(self, *exc) -> None:
        self._lock.close()

    # -- state ------------------------------------------------------------------------------------
    def read_state(self, region: str, geometry_sha256: str) -> RegionState:
        """The saved state, a fresh one for a region never processed, or a ``StateError`` saying how to fix it."""
        if not self.state_path.exists():
            return RegionState(region, geometry_sha256)
        fix = (f"fix it, or move it away to start over (the next run then processes every acquisition again; "
               f"{self.history_path.name} keeps each pair once)")
        try:
            data = json.loads(self.state_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise StateError(f"state file {self.state_path} is not valid JSON ({err}); {fix}") from None
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise StateError(f"state file {self.state_path} is not a version-{STATE_VERSION} monitor state; {fix}")
        if data.get("region") != region:
            raise StateError(f"state file {self.state_path} belongs to region {data.get('region')!r}, not {region!r}; "
                             "each region needs its own state folder")
        last = data.get("last_acquisition")
        try:
            if last is not None:
                dt.date.fromisoformat(last)
            pairs = tuple(data.get("pairs") or ())
            if not all(isinstance(p, dict) and {"before", "after"} <= set(p) for p in pairs):
                raise ValueError("pairs must be records with before and after")
        except (TypeError, ValueError) as err:
            raise StateError(f"state file {self.state_path} is damaged ({err}); {fix}") from None
        if data.get("geometry_sha256") != geometry_sha256:
            raise StateError(
                f"region {region!r} has a different geometry than when {self.state_path} was written, so its history "
                f"would mix two areas. Restore the geometry, or move {self.folder} away to start a new history")
        return RegionState(region, geometry_sha256, last, pairs, data.get("updated"))

    def write_state(self, state: RegionState) -> None:
        text = json.dumps(state.to_dict(), indent=2)
        with self._full_disk_said(len(text)):
            atomic_write(self.state_path, lambda tmp: tmp.write_text(text))

    def _full_disk_said(self, need: int):
        """A full disk here leaves the region's files as they were; the next run does this pair again."""
        return DiskFull(self.folder, need, fix="free some space or choose another --state; the region's state and "
                                               "history are unchanged, and the next run processes this pair again").said()

    # -- history ----------------------------------------------------------------------------------
    def check_history(self) -> None:
        """Fail before any work if the history cannot take the next pair (it is read again when written)."""
        if self.history_path.exists():
            self.read_history()

    def read_history(self) -> gpd.GeoDataFrame | None:
        if not self.history_path.exists():
            return None
        try:
            history = gpd.read_parquet(self.history_path)
            if "pair_key" not in history:
                raise ValueError("it has no pair_key column")
        except (OSError, ValueError) as err:  # pyarrow's errors derive from these
            reason = " ".join(str(err).split())
            raise StateError(
                f"history file {self.history_path} cannot be read ({type(err).__name__}: {reason}); restore it, or "
                f"move it and {self.state_path.name} away to build the history again (detect reuses its cached results)"
            ) from None
        return history

    def write_pair(self, key: str, rows: gpd.GeoDataFrame) -> int:
        """Put one pair's polygons into the history, replacing any rows of the same pair; returns the row count."""
        table = rows.reset_index(drop=True)
        history = self.read_history()
        if history is not None:
            kept = history[history["pair_key"] != key]
            if not len(rows):
                table = kept.reset_index(drop=True)
            elif len(kept):  # one CRS for the whole history: the first pair's
                rows = rows.to_crs(history.crs) if rows.crs != history.crs else rows
                table = gpd.GeoDataFrame(pd.concat([kept, rows], ignore_index=True), geometry="geometry",
                                         crs=history.crs)
        need = (self.history_path.stat().st_size if self.history_path.exists() else 0) \
            + int(rows.memory_usage(deep=True).sum())
        with self._full_disk_said(need):
            atomic_write(self.history_path, table.to_parquet)
        return len(table)
