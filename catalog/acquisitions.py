"""Acquisitions of a region: the days on which the catalog holds scenes that, together, cover it.

Monitoring compares acquisitions, not single scenes: a large region may need several scenes of one
pass, and a day whose scenes only graze the region is no acquisition of it (comparing it would
report most of the region as "not observed"). So the scenes a search finds are grouped by UTC day
and each day's scenes go through the same choice as a detect run (``selection.choose_scenes``
with a zero-day tolerance), which says how much of the region that day covers. A detect run for
the day with ``tolerance_days=0`` then chooses exactly those scenes again.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass

from .collections import pick_collection
from .empty_searches import why_never_found
from .errors import CatalogError
from .regions import DateWindow, Region
from .selection import choose_scenes
from .sources import SceneSource, check_collections, item_datetime

DEFAULT_MIN_COVERAGE = 0.99


@dataclass(frozen=True)
class Acquisition:
    """One day's scenes of a region and how much of the region they cover together."""

    day: dt.date
    scene_ids: tuple[str, ...]
    coverage: float

    def to_dict(self) -> dict:
        return {"date": self.day.isoformat(), "scenes": list(self.scene_ids), "coverage": round(self.coverage, 4)}


@dataclass(frozen=True)
class Acquisitions:
    """The days that cover the region (oldest first) and the days left out, with the reason."""

    covering: tuple[Acquisition, ...]
    partial: tuple[Acquisition, ...]
    collections: tuple[str, ...] | None = None  # the collection(s) searched or picked; pass them on to detect
    collection_reason: str = ""

    @property
    def days(self) -> list[dt.date]:
        return [a.day for a in self.covering]

    def on(self, day: dt.date) -> Acquisition | None:
        return next((a for a in self.covering if a.day == day), None)


def find_acquisitions(region: Region, source: SceneSource, start: dt.date, end: dt.date,
                      min_coverage: float = DEFAULT_MIN_COVERAGE,
                      collections: list[str] | None = None) -> Acquisitions:
    """Every day from ``start`` to ``end`` (inclusive) whose scenes cover at least ``min_coverage`` of the region."""
    if not 0 < min_coverage <= 1:
        raise CatalogError(f"min_coverage must be a fraction in (0, 1], got {min_coverage}")
    if end < start:
        raise CatalogError(f"the search window is reversed: {start} is after {end}")
    first = DateWindow(start, 0).start
    last = DateWindow(end, 0).end
    found = source.search(region, first, last, collections)
    if not found:  # normal between passes, but a region no pass ever covers is a mistake to say
        check_collections(source, collections)
        if (nowhere := why_never_found(source, region, collections)) is not None:
            raise CatalogError(nowhere)
    reason = ""
    if not collections and found:  # one collection, as a detect run would use (catalog.collections)
        found, _, picked = pick_collection(found, found)
        reason = picked.reason
        collections = [picked.collection] if picked.collection else None
    by_day: dict[dt.date, list] = defaultdict(list)
    for item in found:
        when = item_datetime(item)
        if when is not None:
            by_day[when.astimezone(dt.UTC).date()].append(item)
    covering, partial = [], []
    for day in sorted(by_day):
        try:
            choice = choose_scenes(by_day[day], region, DateWindow(day, 0), source.description, min_coverage)
        except CatalogError:  # the day's scenes touch the region's bbox but not the region itself
            partial.append(Acquisition(day, tuple(sorted(i.id for i in by_day[day])), 0.0))
            continue
        found = Acquisition(day, choice.ids, choice.coverage)
        (covering if choice.coverage >= min_coverage else partial).append(found)
    return Acquisitions(tuple(covering), tuple(partial), tuple(collections) if collections else None, reason)
