"""The world: what lies on the ground, in metres of EPSG:32633.

Roads, trees and buildings with their lifetimes (built on one date, demolished on another), and what makes
each date look different without any change (``DateStyle``). Nothing here knows about pixels or files.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
from pyproj import Transformer
from shapely.geometry import Polygon

WORLD_CRS = "EPSG:32633"
DATES = ("2021-06-14", "2022-07-02", "2023-06-21")
CENTRE_LONLAT = (17.99, 48.5)  # just west of 18°E, the UTM 33/34 boundary
BASE_RESOLUTION = 0.5  # metres; date 1 and the training renders
TILE = 256  # training tiles, pixels
DEFAULT_SIZE_PX = 3000

Box = tuple[float, float, float, float]  # minx, miny, maxx, maxy


@dataclass(frozen=True)
class Building:
    """A rectangle on the ground that exists from ``built`` (None: before the first date) until the
    day before ``demolished`` (None: still standing). ``width`` runs along ``angle``, ``depth`` across."""

    id: int
    cx: float
    cy: float
    width: float
    depth: float
    angle: float  # radians, anticlockwise from east
    height: float  # metres, sets the shadow length
    roof: tuple[float, float, float]
    gable: bool  # pitched roof (two shaded halves) or flat roof (with a parapet)
    site: str  # "demo" or "training"
    built: str | None = None
    demolished: str | None = None

    def exists_on(self, date: str) -> bool:
        return (self.built is None or self.built <= date) and (self.demolished is None or date < self.demolished)

    @property
    def radius(self) -> float:
        """Half the diagonal: every roof pixel lies within this distance of the centre."""
        return math.hypot(self.width, self.depth) / 2

    @property
    def area_m2(self) -> float:
        return self.width * self.depth

    def polygon(self) -> Polygon:
        ca, sa = math.cos(self.angle), math.sin(self.angle)
        corners = [(sx * self.width / 2, sy * self.depth / 2) for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
        return Polygon([(self.cx + a * ca - c * sa, self.cy + a * sa + c * ca) for a, c in corners])


@dataclass(frozen=True)
class Tree:
    x: float
    y: float
    radius: float


@dataclass(frozen=True)
class Road:
    x0: float
    y0: float
    x1: float
    y1: float
    width: float

    @property
    def angle(self) -> float:
        return math.atan2(self.y1 - self.y0, self.x1 - self.x0)

    @property
    def length(self) -> float:
        return math.hypot(self.x1 - self.x0, self.y1 - self.y0)

    def distance(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Distance from points to the centre line (a segment), vectorised."""
        dx, dy = self.x1 - self.x0, self.y1 - self.y0
        t = np.clip(((x - self.x0) * dx + (y - self.y0) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
        return np.hypot(x - self.x0 - t * dx, y - self.y0 - t * dy)


@dataclass(frozen=True)
class DateStyle:
    """What makes one acquisition look unlike another without any change on the ground."""

    gain: tuple[float, float, float]
    offset: tuple[float, float, float]
    noise: float  # sensor noise, standard deviation in digital numbers
    sun_azimuth: float  # degrees clockwise from north
    sun_elevation: float  # degrees

    @property
    def shadow_per_metre(self) -> tuple[float, float]:
        """Ground offset of a shadow per metre of height: away from the sun."""
        az, length = math.radians(self.sun_azimuth), 1.0 / math.tan(math.radians(self.sun_elevation))
        return -math.sin(az) * length, -math.cos(az) * length


@dataclass(frozen=True)
class World:
    """Everything that decides the pictures: layout, objects with their lifetimes, and per-date looks."""

    seed: int
    origin: tuple[float, float]  # the demo centre; rendering works in metres relative to it
    footprint_m: float  # side of date 1's footprint
    dates: tuple[str, ...]
    styles: tuple[DateStyle, ...]
    region: Box
    watch_zone: Box
    demo_area: Box  # where the demo's objects live (covers every footprint)
    training_area: Box  # a separate part of the world, never inside any demo footprint
    field_angle: float
    roads: tuple[Road, ...]
    trees: tuple[Tree, ...]
    buildings: tuple[Building, ...]


class _Lot(NamedTuple):
    """A building's geometry before its identity and lifetime are decided."""

    cx: float
    cy: float
    angle: float
    width: float
    depth: float

    @property
    def radius(self) -> float:
        return math.hypot(self.width, self.depth) / 2


def _square(centre: tuple[float, float], side: float) -> Box:
    return centre[0] - side / 2, centre[1] - side / 2, centre[0] + side / 2, centre[1] + side / 2


def _inside(box_: Box, x: float, y: float, margin: float = 0.0) -> bool:
    return box_[0] + margin <= x <= box_[2] - margin and box_[1] + margin <= y <= box_[3] - margin


def demo_origin() -> tuple[float, float]:
    """The demo centre in EPSG:32633, rounded to whole metres so grids snap cleanly."""
    x, y = Transformer.from_crs("EPSG:4326", WORLD_CRS, always_xy=True).transform(*CENTRE_LONLAT)
    return float(round(x)), float(round(y))


def training_tiles_per_side(size_px: int) -> int:
    """The training area grows with the demo so that small test builds stay small."""
    return int(np.clip(round(size_px / 375), 2, 8))


def make_world(seed: int = 0, size_px: int = DEFAULT_SIZE_PX) -> World:
    """Lay out the world for a demo whose first date is ``size_px`` pixels of 0.5 m on a side.

    Counts of objects scale with the area so that a small build is a smaller town, not a denser one,
    but never drop below a few changes per date pair, so every pair has something to find.
    """
    rng = np.random.default_rng(seed)
    footprint = size_px * BASE_RESOLUTION
    origin = demo_origin()
    ox, oy = origin
    training_side = training_tiles_per_side(size_px) * TILE * BASE_RESOLUTION
    demo_area = _square(origin, 1.4 * footprint)
    training_area = _square((demo_area[0] - 60 - training_side / 2, oy), training_side)
    region = _square(origin, 0.8 * footprint)
    watch_zone = (ox + 0.05 * footprint, oy + 0.05 * footprint, ox + 0.38 * footprint, oy + 0.38 * footprint)

    demo_roads = _demo_roads(rng, origin, footprint)
    training_roads = _training_roads(rng, training_area)
    taken: list[_Lot] = []
    demo_buildings = _demo_buildings(rng, footprint, demo_area, region, watch_zone, demo_roads, taken)
    training_buildings = _training_buildings(rng, training_area, training_roads, taken)
    buildings = tuple(replace(b, id=i) for i, b in enumerate(demo_buildings + training_buildings, start=1))
    scale = (footprint / 1500) ** 2
    trees = _trees(rng, demo_area, demo_roads, taken, clumps=max(4, round(40 * scale)))
    trees += _trees(rng, training_area, training_roads, taken, clumps=max(3, round(25 * (training_side / 1024) ** 2)))
    return World(
        seed=seed, origin=origin, footprint_m=footprint, dates=DATES, styles=_date_styles(rng, len(DATES)),
        region=region, watch_zone=watch_zone, demo_area=demo_area, training_area=training_area,
        field_angle=float(rng.uniform(-0.5, 0.5)), roads=demo_roads + training_roads, trees=trees,
        buildings=buildings,
    )


def _date_styles(rng: np.random.Generator, n: int) -> tuple[DateStyle, ...]:
    """Illumination, season and sensor differ per date: per-band gain and offset, sun, noise."""
    styles = []
    for _ in range(n):
        gain = 1.0 + rng.uniform(-0.08, 0.08) + rng.normal(0.0, 0.025, 3)
        styles.append(DateStyle(
            gain=tuple(float(g) for g in gain), offset=tuple(float(o) for o in rng.uniform(-5, 5, 3)),
            noise=float(rng.uniform(0.6, 0.9)), sun_azimuth=float(rng.uniform(125, 150)),
            sun_elevation=float(rng.uniform(52, 62)),
        ))
    return tuple(styles)


def _demo_roads(rng: np.random.Generator, origin: tuple[float, float], footprint: float) -> tuple[Road, ...]:
    """A main road across the town, a street north into the new district, a lane south to the old village."""
    ox, oy = origin
    a = float(rng.uniform(-0.25, 0.25))
    ca, sa = math.cos(a), math.sin(a)
    main = Road(ox - footprint * ca, oy - footprint * sa, ox + footprint * ca, oy + footprint * sa, 7.0)
    nx, ny = ox + 0.2 * footprint * ca, oy + 0.2 * footprint * sa
    street = Road(nx, ny, nx - 0.6 * footprint * sa, ny + 0.6 * footprint * ca, 5.0)
    sx, sy = ox - 0.22 * footprint * ca, oy - 0.22 * footprint * sa
    lane = Road(sx, sy, sx + 0.55 * footprint * sa, sy - 0.55 * footprint * ca, 4.5)
    return main, street, lane


def _training_roads(rng: np.random.Generator, area: Box) -> tuple[Road, ...]:
    """A road across the training area and a street off it."""
    cx, cy, side = (area[0] + area[2]) / 2, (area[1] + area[3]) / 2, area[2] - area[0]
    a = float(rng.uniform(0, math.pi))
    ca, sa = math.cos(a), math.sin(a)
    main = Road(cx - side * ca, cy - side * sa, cx + side * ca, cy + side * sa, 7.0)
    street = Road(cx, cy, cx - 0.6 * side * sa, cy + 0.6 * side * ca, 5.0)
    return main, street


# --- buildings -------------------------------------------------------------------------------------

_ROOFS_HOUSE = (  # (colour, weight): central-European roofs, terracotta first
    ((182.0, 86.0, 64.0), 0.45), ((74.0, 74.0, 80.0), 0.25), ((120.0, 84.0, 62.0), 0.15), ((150.0, 150.0, 152.0), 0.15),
)
_ROOFS_LARGE = (((196.0, 198.0, 200.0), 0.5), ((140.0, 152.0, 160.0), 0.3), ((112.0, 112.0, 110.0), 0.2))


def _pick_roof(rng: np.random.Generator,
               palette: Sequence[tuple[tuple[float, float, float], float]]) -> tuple[float, float, float]:
    weights = np.array([w for _, w in palette])
    colour = np.array(palette[rng.choice(len(palette), p=weights / weights.sum())][0])
    r, g, b = (float(c) for c in np.clip(colour + rng.normal(0.0, 5.0, 3), 20, 235))
    return r, g, b


def _new_building(rng: np.random.Generator, lot: _Lot, site: str, built: str | None = None) -> Building:
    large = lot.width > 18
    return Building(
        id=0, cx=lot.cx, cy=lot.cy, width=lot.width, depth=lot.depth, angle=lot.angle,
        height=float(rng.uniform(6.0, 10.0) if large else rng.uniform(5.5, 9.5)),
        roof=_pick_roof(rng, _ROOFS_LARGE if large else _ROOFS_HOUSE), gable=not large, site=site, built=built,
    )


def _lot_size(rng: np.random.Generator, large_share: float = 0.12) -> tuple[float, float]:
    """Houses of about 10 x 12 m, now and then a barn or shed of 20-36 m."""
    if rng.random() < large_share:
        return float(rng.uniform(20, 36)), float(rng.uniform(12, 20))
    width = float(rng.uniform(10, 16))
    return width, float(rng.uniform(8, min(width, 12)))


def _along_road(roads: Sequence[Road], max_setback: float) -> Callable[[np.random.Generator], _Lot]:
    """Propose lots facing a road, set back a little, aligned with it (as villages grow)."""
    weights = np.array([r.length for r in roads])

    def propose(rng: np.random.Generator) -> _Lot:
        road = roads[rng.choice(len(roads), p=weights / weights.sum())]
        width, depth = _lot_size(rng)
        t, side = rng.random(), rng.choice((-1.0, 1.0))
        setback = road.width / 2 + depth / 2 + rng.uniform(3, max_setback)
        a = road.angle
        x = road.x0 + t * (road.x1 - road.x0) - side * setback * math.sin(a)
        y = road.y0 + t * (road.y1 - road.y0) + side * setback * math.cos(a)
        return _Lot(x, y, a + float(rng.normal(0, 0.03)), width, depth)

    return propose


def _anywhere(area: Box, roads: Sequence[Road]) -> Callable[[np.random.Generator], _Lot]:
    """Propose lots anywhere in an area, aligned with the nearest road."""

    def propose(rng: np.random.Generator) -> _Lot:
        x, y = rng.uniform(area[0], area[2]), rng.uniform(area[1], area[3])
        nearest = min(roads, key=lambda r: float(r.distance(np.array(x), np.array(y))))
        width, depth = _lot_size(rng, large_share=0.05)
        return _Lot(float(x), float(y), nearest.angle + float(rng.normal(0, 0.03)), width, depth)

    return propose


def _fits(lot: _Lot, taken: Sequence[_Lot], roads: Sequence[Road], area: Box, avoid: Box | None) -> bool:
    """Inside the area, clear of every road and of every other lot ever built (past or future)."""
    if not _inside(area, lot.cx, lot.cy, lot.radius) or (avoid is not None and _inside(avoid, lot.cx, lot.cy)):
        return False
    x, y = np.array(lot.cx), np.array(lot.cy)
    if any(float(r.distance(x, y)) < r.width / 2 + lot.radius + 1.5 for r in roads):
        return False
    if not taken:
        return True
    others = np.array([(t.cx, t.cy, t.radius) for t in taken])
    gaps = np.hypot(others[:, 0] - lot.cx, others[:, 1] - lot.cy) - others[:, 2] - lot.radius
    return bool(gaps.min() > 4.0)


def _place(rng: np.random.Generator, count: int, propose: Callable[[np.random.Generator], _Lot],
           taken: list[_Lot], roads: Sequence[Road], area: Box, avoid: Box | None = None) -> list[_Lot]:
    """Rejection sampling; gives up quietly after many tries (a full area just gets fewer lots)."""
    placed: list[_Lot] = []
    for _ in range(count * 300):
        if len(placed) == count:
            break
        lot = propose(rng)
        if _fits(lot, taken, roads, area, avoid):
            taken.append(lot)
            placed.append(lot)
    return placed


def _schedule(rng: np.random.Generator, old: list[Building], added_per_step: Callable[[str], list[Building]],
              removable: Callable[[Building], bool], removed_per_step: int) -> list[Building]:
    """Give buildings their lifetimes: each later date adds some and demolishes some old ones."""
    buildings = list(old)
    for date in DATES[1:]:
        candidates = [i for i, b in enumerate(buildings) if b.built is None and b.demolished is None and removable(b)]
        for i in rng.choice(candidates, size=min(removed_per_step, len(candidates)), replace=False):
            buildings[int(i)] = replace(buildings[int(i)], demolished=date)
        buildings += added_per_step(date)
    return buildings


def _demo_buildings(rng: np.random.Generator, footprint: float, area: Box, region: Box, watch_zone: Box,
                    roads: tuple[Road, ...], taken: list[_Lot]) -> list[Building]:
    """An old village along the roads; a new district that fills up date by date; some infill and demolition."""
    scale = (footprint / 1500) ** 2
    old_lots = _place(rng, max(30, round(200 * scale)), _along_road(roads, 30), taken, roads, area, avoid=watch_zone)
    old = [_new_building(rng, lot, "demo") for lot in old_lots]
    n_added = max(3, round(9 * scale))

    def added(date: str) -> list[Building]:
        in_district = math.ceil(0.75 * n_added)
        lots = _place(rng, in_district, _along_road(roads[1:2], 45), taken, roads, watch_zone)
        lots += _place(rng, n_added - len(lots), _along_road(roads, 30), taken, roads, region)
        return [_new_building(rng, lot, "demo", built=date) for lot in lots]

    def removable(b: Building) -> bool:
        return _inside(region, b.cx, b.cy, b.radius)

    return _schedule(rng, old, added, removable, max(2, round(3.5 * scale)))


def _training_buildings(rng: np.random.Generator, area: Box, roads: tuple[Road, ...],
                        taken: list[_Lot]) -> list[Building]:
    """Denser, more scattered change than the demo town, so that many training tiles hold some."""
    scale = ((area[2] - area[0]) / 1024) ** 2
    old_lots = _place(rng, max(10, round(90 * scale)), _along_road(roads, 40), taken, roads, area)
    old = [_new_building(rng, lot, "training") for lot in old_lots]
    n_added = max(4, round(30 * scale))

    def added(date: str) -> list[Building]:
        lots = _place(rng, n_added, _anywhere(area, roads), taken, roads, area)
        return [_new_building(rng, lot, "training", built=date) for lot in lots]

    return _schedule(rng, old, added, lambda b: True, max(2, round(10 * scale)))


# --- trees -----------------------------------------------------------------------------------------

def _trees(rng: np.random.Generator, area: Box, roads: Sequence[Road], lots: Sequence[_Lot],
           clumps: int) -> tuple[Tree, ...]:
    """Clumps of trees in the open and rows along the roads, never on a road or a building lot."""
    centres = rng.uniform((area[0], area[1]), (area[2], area[3]), size=(clumps, 2))
    points = [c + rng.normal(0, 10, size=(int(rng.integers(3, 13)), 2)) for c in centres]
    for road in roads:
        along = np.arange(6.0, road.length, 12.0)
        for side in (-1.0, 1.0):
            keep = along[rng.random(along.size) < 0.35]
            offset = road.width / 2 + 3.5
            a = road.angle
            x = road.x0 + keep * math.cos(a) - side * offset * math.sin(a)
            y = road.y0 + keep * math.sin(a) + side * offset * math.cos(a)
            points.append(np.column_stack([x, y]))
    xy = np.concatenate(points)
    radius = rng.uniform(2.0, 4.5, len(xy))
    ok = (xy[:, 0] > area[0]) & (xy[:, 0] < area[2]) & (xy[:, 1] > area[1]) & (xy[:, 1] < area[3])
    for road in roads:
        ok &= road.distance(xy[:, 0], xy[:, 1]) > road.width / 2 + 0.5
    if lots:
        lot = np.array([(t.cx, t.cy, t.radius) for t in lots])
        gap = np.hypot(xy[:, 0, None] - lot[None, :, 0], xy[:, 1, None] - lot[None, :, 1]) - lot[None, :, 2]
        ok &= (gap - radius[:, None]).min(axis=1) > 1.5
    return tuple(Tree(float(x), float(y), float(r)) for (x, y), r in zip(xy[ok], radius[ok]))
