"""One collection per run: when a search returns several, the one that suits the model, and why.

A STAC API such as Earth Search holds Sentinel-2 L2A, L1C and Landsat over the same place. Mixing
them would compare different processing levels, so a run uses one collection. When the user names
none, it takes the one whose scenes give the model red, green and blue at surface reflectance (the
level both dates can share whatever the archive), at the finest resolution, with scenes on both
dates; top-of-atmosphere collections come last. The reason is kept for the run's record.
"""

from __future__ import annotations

from dataclasses import dataclass

import pystac

from .errors import CatalogError
from .grid import native_resolution
from .radiometry import EIGHT_BIT, STATED, SURFACE, TOP_OF_ATMOSPHERE, radiometry_of

_LEVEL_ORDER = {SURFACE: 0, STATED: 1, EIGHT_BIT: 2, TOP_OF_ATMOSPHERE: 3}


@dataclass(frozen=True)
class CollectionChoice:
    """The collection a run uses and the sentence that says why (empty when there was no choice)."""

    collection: str | None
    reason: str = ""


def pick_collection(before: list[pystac.Item], after: list[pystac.Item]) -> tuple[list[pystac.Item], list[pystac.Item], CollectionChoice]:
    """Both dates' search results narrowed to one collection."""
    ids = sorted({str(i.collection_id) for i in (*before, *after)})
    if len(ids) <= 1:
        return before, after, CollectionChoice(ids[0] if ids else None)
    candidates, refused = [], []
    for collection in ids:
        first = [i for i in before if str(i.collection_id) == collection]
        second = [i for i in after if str(i.collection_id) == collection]
        if not first or not second:
            refused.append(f"{collection} (scenes for only one date)")
            continue
        try:
            rule = radiometry_of(first[0])
        except CatalogError as err:
            refused.append(f"{collection} ({str(err).split(';')[0]})")
            continue
        resolution = native_resolution(first[0], rule.bands) or float("inf")
        candidates.append((_LEVEL_ORDER.get(rule.level, 9) == 3, resolution, _LEVEL_ORDER.get(rule.level, 9),
                           -len(first) - len(second), collection, rule.level, first, second))
    if not candidates:
        raise CatalogError(f"the search found scenes of {', '.join(ids)}, but none can serve both dates: "
                           f"{'; '.join(refused)}; widen the dates or name a collection with --collection")
    candidates.sort(key=lambda c: c[:5])
    *_, collection, level, first, second = candidates[0]
    listed = ", ".join(f"{c[4]} ({c[5]}, {_metres(c[1])}, {-c[3]} scenes)" for c in candidates)
    if refused:
        listed += "; not usable: " + ", ".join(refused)
    reason = (f"the catalog holds several collections here: {listed}. Using {collection}: {level} at the finest "
              "resolution of red, green and blue. Name another with --collection")
    return first, second, CollectionChoice(collection, reason)


def _metres(resolution: float) -> str:
    return "resolution unknown" if resolution == float("inf") else f"{resolution:g} m"
