"""Why a date's search found no scene: the catalog is empty, the region is wrong, or the dates are.

An empty window is the first failure most users meet, and "widen the tolerance" alone leaves them
guessing by how much, one slow run at a time. So the source is asked again, only on this failure
path: first whether it holds anything at all, then whether anything lies over the region at any
date, and last for the dates nearest the window that do have scenes there, so the message can name
them and the tolerance that reaches them.
"""

from __future__ import annotations

import datetime as dt

from .regions import DateWindow, Region
from .sources import SceneSource, item_datetime

NEARBY_DAYS = (60, 730)  # how far beyond the window the nearest dates are looked for, in turn
NEARBY_CAP = 2_000  # Items read per look; more means the nearest dates may be among those not read
PLACELESS_SAMPLE = 100  # Items read to tell a catalog without footprints from a region in the wrong place
SEASON_DAYS = 90  # a tolerance beyond this would compare seasons, not dates: advise other dates instead


def why_nothing_found(source: SceneSource, region: Region, empty: list[DateWindow],
                      collections: list[str] | None = None) -> str:
    """The message for date windows (``empty``) whose search found no scene over ``region``."""
    if (nowhere := why_never_found(source, region, collections)) is not None:
        return nowhere
    named = _of(collections)
    reaches = []
    sentences = []
    for window in empty:
        nearby, complete = nearest_dates(source, region, window, collections)
        sentence = (f"no scene{named} in {source.description} overlaps region {region.described} "
                    f"between {window.start:%Y-%m-%d} and {window.end:%Y-%m-%d} ({window})")
        if not nearby:
            sentences.append(f"{sentence}, nor within {NEARBY_DAYS[-1]} days of that window (it has scenes there "
                             "at other dates)")
            continue
        if not complete:
            which = "scenes there are on, among other dates,"
        elif len(nearby) > 1:
            which = "the nearest dates with scenes there are"
        else:
            which = "the nearest date with scenes there is"
        sentences.append(f"{sentence}; {which} {' and '.join(_away(day, window.day) for day in nearby)}")
        reaches.append(min(abs((day - window.day).days) for day in nearby))
    if len(reaches) < len(empty) or max(reaches) > SEASON_DAYS:
        return "; ".join(sentences) + ": pick dates nearer those the catalog holds"
    days = max(reaches)
    return "; ".join(sentences) + (f": a tolerance of {days} days (--tolerance-days {days}) reaches the nearest, or "
                                   "pick dates nearer them")


def why_never_found(source: SceneSource, region: Region, collections: list[str] | None = None) -> str | None:
    """Why no date could ever find a scene over ``region`` (an empty catalog, or a region outside all
    it holds), or None when some date would: what a later date or a wider window cannot mend."""
    if source.has_any(region, collections):
        return None
    named = _of(collections)
    held = source.search(None, None, None, collections, max_items=PLACELESS_SAMPLE)  # type: ignore[arg-type]
    if not held:
        return (f"{source.description} holds no Items{named} at all, so no region or date can be searched; "
                "give the catalog that holds the scenes")
    placeless = [item.id for item in held if item.geometry is None]
    if len(placeless) == len(held):  # the region is not to blame: nothing says where these scenes lie
        return (f"the Items{named} of {source.description} have no geometry (e.g. {placeless[0]!r}), so none can "
                "be placed over a region; give each Item its footprint (geometry and bbox)")
    return (f"no scene{named} in {source.description} overlaps region {region.described} at any date; check "
            "the region (a bbox is W,S,E,N in degrees: longitude first) or name a catalog that covers it")


def nearest_dates(source: SceneSource, region: Region, window: DateWindow,
                  collections: list[str] | None = None) -> tuple[list[dt.date], bool]:
    """The last date before ``window`` and the first after it with a scene over ``region`` (either may
    be missing), looked for ever further out; and whether the look read every scene it found (if
    not, nearer dates may exist among those left unread)."""
    for extra in NEARBY_DAYS:
        start = window.start - dt.timedelta(days=extra)
        end = window.end + dt.timedelta(days=extra)
        found = source.search(region, start, end, collections, max_items=NEARBY_CAP)
        days = sorted({when.astimezone(dt.timezone.utc).date() for item in found
                       if (when := item_datetime(item)) is not None})
        before = [day for day in days if day < window.day]
        after = [day for day in days if day > window.day]
        nearby = before[-1:] + after[:1]
        if nearby:
            return nearby, len(found) < NEARBY_CAP
    return [], True


def _of(collections: list[str] | None) -> str:
    return f" of collection(s) {', '.join(collections)}" if collections else ""


def _away(day: dt.date, target: dt.date) -> str:
    gap = (day - target).days
    return f"{day.isoformat()} ({abs(gap)} days {'after' if gap > 0 else 'before'})"
