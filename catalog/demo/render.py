"""Pixels: each date's grid, the world position of every pixel centre, and rendering the world onto it.

Texture comes from functions of the ground position, not of the pixel, so the same spot looks the same
from any grid; ``change_mask`` is the exact truth on a grid.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from affine import Affine
from pyproj import Transformer
from shapely.geometry import Polygon

from .world import BASE_RESOLUTION, DATES, WORLD_CRS, Box, Building, DateStyle, Road, Tree, World

_WORKERS = min(4, os.cpu_count() or 1)


# --------------------------------------------------------------------------------------------------
# Grids: where each date's pixels are
# --------------------------------------------------------------------------------------------------

class Acquisition(NamedTuple):
    """How one date was 'flown': its grid differs from the others on purpose."""

    date: str
    crs: str
    resolution: float
    shift: tuple[float, float]  # footprint centre offset, as a fraction of the footprint side
    cloud_cover: float


ACQUISITIONS = (
    Acquisition(DATES[0], "EPSG:32633", 0.5, (0.0, 0.0), 3.0),
    Acquisition(DATES[1], "EPSG:32633", 0.6, (0.03, -0.02), 12.0),
    Acquisition(DATES[2], "EPSG:32634", 0.5, (-0.015, 0.01), 1.5),
)


@dataclass(frozen=True)
class Grid:
    """A north-up pixel grid in some CRS."""

    crs: str
    transform: Affine
    width: int
    height: int

    @property
    def resolution(self) -> float:
        return self.transform.a

    @property
    def bounds(self) -> Box:
        left, top = self.transform.c, self.transform.f
        return left, top + self.transform.e * self.height, left + self.transform.a * self.width, top

    def footprint_lonlat(self, points_per_side: int = 8) -> Polygon:
        """The footprint in lon/lat, densified so that it stays right after reprojection."""
        left, bottom, right, top = self.bounds
        t = np.linspace(0.0, 1.0, points_per_side, endpoint=False)
        xs = np.concatenate([left + t * (right - left), np.full_like(t, right), right - t * (right - left),
                             np.full_like(t, left)])
        ys = np.concatenate([np.full_like(t, top), top - t * (top - bottom), np.full_like(t, bottom),
                             bottom + t * (top - bottom)])
        lon, lat = Transformer.from_crs(self.crs, "EPSG:4326", always_xy=True).transform(xs, ys)
        return Polygon(zip(lon, lat))


def _snapped_grid(crs: str, centre: tuple[float, float], side: float, resolution: float) -> Grid:
    n = int(round(side / resolution))
    left = round((centre[0] - side / 2) / resolution) * resolution
    top = round((centre[1] + side / 2) / resolution) * resolution
    return Grid(crs, Affine(resolution, 0.0, left, 0.0, -resolution, top), n, n)


def date_grids(world: World) -> tuple[Grid, ...]:
    """One grid per acquisition: each covers the region, none equals another."""
    grids = []
    for acq in ACQUISITIONS:
        cx, cy = Transformer.from_crs(WORLD_CRS, acq.crs, always_xy=True).transform(*world.origin)
        centre = (cx + acq.shift[0] * world.footprint_m, cy + acq.shift[1] * world.footprint_m)
        grids.append(_snapped_grid(acq.crs, centre, world.footprint_m, acq.resolution))
    return tuple(grids)


def training_grid(world: World) -> Grid:
    area = world.training_area
    centre = ((area[0] + area[2]) / 2, (area[1] + area[3]) / 2)
    return _snapped_grid(WORLD_CRS, centre, area[2] - area[0], BASE_RESOLUTION)


@dataclass(frozen=True)
class Canvas:
    """A grid plus the world position of each pixel centre (metres from the world origin, float32:
    absolute UTM northings need float64, offsets from the origin are exact enough in float32)."""

    grid: Grid
    origin: tuple[float, float]
    u: np.ndarray
    v: np.ndarray

    def windows(self, boxes: np.ndarray) -> list[tuple[slice, slice] | None]:
        """Pixel windows (with a margin) that hold each world box (absolute EPSG:32633); None if off-grid."""
        if len(boxes) == 0:
            return []
        xs = boxes[:, [0, 2, 2, 0]].ravel()
        ys = boxes[:, [1, 1, 3, 3]].ravel()
        if self.grid.crs != WORLD_CRS:
            xs, ys = Transformer.from_crs(WORLD_CRS, self.grid.crs, always_xy=True).transform(xs, ys)
        t = self.grid.transform
        cols = ((np.asarray(xs) - t.c) / t.a).reshape(-1, 4)
        rows = ((np.asarray(ys) - t.f) / t.e).reshape(-1, 4)
        r0 = np.clip(np.floor(rows.min(1)).astype(int) - 2, 0, self.grid.height)
        r1 = np.clip(np.ceil(rows.max(1)).astype(int) + 2, 0, self.grid.height)
        c0 = np.clip(np.floor(cols.min(1)).astype(int) - 2, 0, self.grid.width)
        c1 = np.clip(np.ceil(cols.max(1)).astype(int) + 2, 0, self.grid.width)
        return [(slice(a, b), slice(c, d)) if a < b and c < d else None for a, b, c, d in zip(r0, r1, c0, c1)]


def make_canvas(grid: Grid, origin: tuple[float, float]) -> Canvas:
    """World coordinates of every pixel centre, reprojected exactly (pyproj) when the grid is in another CRS."""
    t = grid.transform
    x = t.c + (np.arange(grid.width) + 0.5) * t.a
    y = t.f + (np.arange(grid.height) + 0.5) * t.e
    if grid.crs == WORLD_CRS:
        u = np.broadcast_to((x - origin[0]).astype(np.float32), (grid.height, grid.width))
        v = np.broadcast_to((y - origin[1]).astype(np.float32)[:, None], (grid.height, grid.width))
        return Canvas(grid, origin, np.ascontiguousarray(u), np.ascontiguousarray(v))
    u = np.empty((grid.height, grid.width), np.float32)
    v = np.empty_like(u)

    def reproject(rows: slice) -> None:  # pyproj releases the GIL: one band of rows per core
        xx, yy = np.meshgrid(x, y[rows])
        wx, wy = Transformer.from_crs(grid.crs, WORLD_CRS, always_xy=True).transform(xx, yy)
        u[rows], v[rows] = wx - origin[0], wy - origin[1]

    step = -(-grid.height // _WORKERS)
    with ThreadPoolExecutor(_WORKERS) as pool:
        list(pool.map(reproject, [slice(r, r + step) for r in range(0, grid.height, step)]))
    return Canvas(grid, origin, u, v)


# --------------------------------------------------------------------------------------------------
# Procedural texture: functions of the ground position, so they look the same from any grid
# --------------------------------------------------------------------------------------------------

def _hash01(ix: np.ndarray, iy: np.ndarray, salt: int) -> np.ndarray:
    """A deterministic pseudo-random number in [0, 1) per integer lattice point."""
    h = ix.astype(np.uint32) * np.uint32(0x8DA6B343) ^ iy.astype(np.uint32) * np.uint32(0xD8163841)
    h ^= np.uint32(salt & 0xFFFFFFFF)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0x5BD1E995)
    h ^= h >> np.uint32(15)
    return (h >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / (1 << 24))


class _Lattice(NamedTuple):
    """The few integer lattice points that many pixels fall on: hash those once, then look pixels up."""

    gx: np.ndarray
    gy: np.ndarray
    flat: np.ndarray  # each pixel's index into the raveled lattice
    row: int  # lattice row length, to step to the next row

    def hash01(self, salt: int) -> np.ndarray:
        return _hash01(self.gx, self.gy, salt).ravel()


def _lattice(ix: np.ndarray, iy: np.ndarray) -> _Lattice:
    x0, y0 = int(ix.min()), int(iy.min())
    gx, gy = np.meshgrid(np.arange(x0, int(ix.max()) + 2), np.arange(y0, int(iy.max()) + 2))
    row = gx.shape[1]
    return _Lattice(gx, gy, (iy - y0) * row + (ix - x0), row)


def _value_noise(u: np.ndarray, v: np.ndarray, scale: float, salt: int) -> np.ndarray:
    """Smooth noise in [0, 1) with features of about ``scale`` metres."""
    if u.size == 0:
        return np.zeros(u.shape, np.float32)
    x, y = u * np.float32(1.0 / scale), v * np.float32(1.0 / scale)
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    lattice = _lattice(x0.astype(np.int32), y0.astype(np.int32))
    h, i = lattice.hash01(salt), lattice.flat
    top = h[i] * (1 - fx) + h[i + 1] * fx
    bottom = h[i + lattice.row] * (1 - fx) + h[i + lattice.row + 1] * fx
    return top * (1 - fy) + bottom * fy


# --------------------------------------------------------------------------------------------------
# Rendering one date onto one canvas
# --------------------------------------------------------------------------------------------------

_CROPS = np.array([  # meadow first (never rotated), then crops that change from year to year
    [104, 136, 66], [204, 182, 118], [170, 168, 96], [84, 122, 54], [186, 166, 122], [142, 114, 88],
    [72, 106, 46], [98, 138, 62],
], dtype=np.float32)
_TRACKS = np.array([0.03, 0.06, 0.05, 0.10, 0.08, 0.07, 0.09, 0.04], dtype=np.float32)
_MARGIN = np.array([96, 124, 62], dtype=np.float32)
_ASPHALT = np.array([112, 112, 116], dtype=np.float32)
_GRAVEL = np.array([166, 158, 144], dtype=np.float32)
_TREE = np.array([48, 76, 40], dtype=np.float32)
_SHADOW = np.array([0.45, 0.47, 0.53], dtype=np.float32)
_FIELD = (95.0, 170.0)  # field size across and along the furrows, metres


def _fields(world: World, date_index: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Fields in a brick pattern, their crops rotating from year to year, with furrows, grass margins
    and soil patches: a background that changes colour between dates without any 'change'."""
    salt = world.seed * 7919 + 17
    ca, sa = np.float32(math.cos(world.field_angle)), np.float32(math.sin(world.field_angle))
    p, q = u * ca + v * sa, v * ca - u * sa
    i = np.floor(p * np.float32(1 / _FIELD[0])).astype(np.int32)
    column = np.arange(i.min(), i.max() + 1)
    q = q + (_hash01(column, column, salt) * np.float32(_FIELD[1]))[i - column[0]]  # brick pattern
    j = np.floor(q * np.float32(1 / _FIELD[1])).astype(np.int32)
    lattice = _lattice(i, j)  # one lattice point per field
    rotating = lattice.hash01(salt + 1) < 0.75
    crop_of_year = 1 + (lattice.hash01(salt + 10 + date_index) * (len(_CROPS) - 1)).astype(np.int32)
    crop = np.where(rotating, crop_of_year, 0)[lattice.flat]
    brightness = (0.93 + 0.14 * lattice.hash01(salt + 2))[lattice.flat]
    furrows = np.sin(q * np.float32(2 * math.pi / 6.0)) * _TRACKS[crop]
    soil = 0.10 * (_value_noise(u, v, 30.0, salt + 3) - 0.5) + 0.06 * (_value_noise(u, v, 2.5, salt + 4) - 0.5)
    image = _CROPS[crop] * (brightness * (1 + furrows + soil))[..., None]
    pf = p - i * np.float32(_FIELD[0])
    qf = q - j * np.float32(_FIELD[1])
    edge = (np.minimum(pf, _FIELD[0] - pf) < 1.2) | (np.minimum(qf, _FIELD[1] - qf) < 1.2)
    image[edge] = _MARGIN * (1 + soil[edge, None])
    return image


def _draw_roads(image: np.ndarray, world: World, canvas: Canvas) -> None:
    """Asphalt with a lighter gravel shoulder."""
    ox, oy = world.origin
    boxes = np.array([(min(r.x0, r.x1) - r.width, min(r.y0, r.y1) - r.width,
                       max(r.x0, r.x1) + r.width, max(r.y0, r.y1) + r.width) for r in world.roads])
    for road, win in zip(world.roads, canvas.windows(boxes)):
        if win is None:
            continue
        local = Road(road.x0 - ox, road.y0 - oy, road.x1 - ox, road.y1 - oy, road.width)
        d = local.distance(canvas.u[win], canvas.v[win])
        part = image[win]  # a view: writing into it draws on the image
        part[d < road.width / 2 + 0.8] = _GRAVEL
        part[d < road.width / 2] = _ASPHALT


def _building_frame(b: Building, u: np.ndarray, v: np.ndarray,
                    origin: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel positions in the building's own axes (along its width, across its depth)."""
    du, dv = u - np.float32(b.cx - origin[0]), v - np.float32(b.cy - origin[1])
    ca, sa = np.float32(math.cos(b.angle)), np.float32(math.sin(b.angle))
    return du * ca + dv * sa, dv * ca - du * sa


def _on_roof(b: Building, along: np.ndarray, across: np.ndarray) -> np.ndarray:
    return (np.abs(along) <= b.width / 2) & (np.abs(across) <= b.depth / 2)


def _in_shadow(b: Building, along: np.ndarray, across: np.ndarray, shift: tuple[float, float]) -> np.ndarray:
    """Ground the building hides from the sun: the roof rectangle swept along the shadow vector."""
    ca, sa = math.cos(b.angle), math.sin(b.angle)
    sx, sy = shift[0] * b.height, shift[1] * b.height
    moves = ((along, b.width / 2, sx * ca + sy * sa), (across, b.depth / 2, sy * ca - sx * sa))
    lo, hi = np.zeros(along.shape, np.float32), np.ones(along.shape, np.float32)
    ok = np.ones(along.shape, bool)
    for p, half, d in moves:
        if abs(d) < 1e-6:
            ok &= np.abs(p) <= half
            continue
        t1, t2 = (p - half) / np.float32(d), (p + half) / np.float32(d)
        lo, hi = np.maximum(lo, np.minimum(t1, t2)), np.minimum(hi, np.maximum(t1, t2))
    return ok & (lo <= hi) & ~_on_roof(b, along, across)


def _building_boxes(buildings: Sequence[Building], reach: float) -> np.ndarray:
    return np.array([(b.cx - b.radius - reach * b.height, b.cy - b.radius - reach * b.height,
                      b.cx + b.radius + reach * b.height, b.cy + b.radius + reach * b.height) for b in buildings])


def _tree_boxes(trees: Sequence[Tree], reach: float) -> np.ndarray:
    return np.array([(t.x - t.radius * (1 + 3 * reach) - 3 * reach, t.y - t.radius * (1 + 3 * reach) - 3 * reach,
                      t.x + t.radius * (1 + 3 * reach) + 3 * reach, t.y + t.radius * (1 + 3 * reach) + 3 * reach)
                     for t in trees])


def _tree_height(t: Tree) -> float:
    return 2.5 * t.radius + 3.0


def _draw_trees(image: np.ndarray, world: World, style: DateStyle, canvas: Canvas, shadow: np.ndarray) -> None:
    """Round crowns, lit on the sun side, with a leafy texture; their shadows go into ``shadow``."""
    ox, oy = world.origin
    sun = (math.sin(math.radians(style.sun_azimuth)), math.cos(math.radians(style.sun_azimuth)))
    sx, sy = style.shadow_per_metre
    reach = math.hypot(sx, sy)
    for tree, win in zip(world.trees, canvas.windows(_tree_boxes(world.trees, reach))):
        if win is None:
            continue
        du, dv = canvas.u[win] - np.float32(tree.x - ox), canvas.v[win] - np.float32(tree.y - oy)
        h = _tree_height(tree)
        r2 = np.float32(tree.radius ** 2)
        crown = du * du + dv * dv < r2
        # the crown's shadow, drawn out towards the trunk's: a capsule from 40 % to 100 % of the height
        cast = Road(0.4 * sx * h, 0.4 * sy * h, sx * h, sy * h, 0.0).distance(du, dv) < tree.radius
        shadow[win] |= cast & ~crown
        if not crown.any():
            continue
        cu, cv = du[crown], dv[crown]
        lit = 0.72 + 0.35 * (1 - (cu * cu + cv * cv) / r2) + 0.18 * (cu * sun[0] + cv * sun[1]) / tree.radius
        leaves = 0.85 + 0.3 * _value_noise(canvas.u[win][crown], canvas.v[win][crown], 0.9, world.seed + 5)
        image[win][crown] = _TREE * (lit * leaves)[:, None]


def _draw_buildings(image: np.ndarray, world: World, date: str, style: DateStyle, canvas: Canvas,
                    shadow: np.ndarray) -> None:
    """Shadows first (darkening whatever lies there), then the roofs on top."""
    standing = [b for b in world.buildings if b.exists_on(date)]
    shift = style.shadow_per_metre
    windows = canvas.windows(_building_boxes(standing, math.hypot(*shift))) if standing else []
    frames = {}
    for b, win in zip(standing, windows):
        if win is not None:
            frames[b.id] = _building_frame(b, canvas.u[win], canvas.v[win], world.origin)
            shadow[win] |= _in_shadow(b, *frames[b.id], shift)
    image[shadow] *= _SHADOW
    sun = (math.sin(math.radians(style.sun_azimuth)), math.cos(math.radians(style.sun_azimuth)))
    for b, win in zip(standing, windows):
        if win is not None:
            _draw_roof(image, b, win, frames[b.id], sun, canvas, world.seed)


def _draw_roof(image: np.ndarray, b: Building, win: tuple[slice, slice], frame: tuple[np.ndarray, np.ndarray],
               sun: tuple[float, float], canvas: Canvas, seed: int) -> None:
    """A pitched roof shows two halves, one facing the sun; a flat roof shows a darker parapet."""
    along, across = frame
    roof = _on_roof(b, along, across)
    if not roof.any():
        return
    a, c = along[roof], across[roof]
    if b.gable:
        normal = (-math.sin(b.angle), math.cos(b.angle))  # the half with across > 0 faces this way
        facing = normal[0] * sun[0] + normal[1] * sun[1]
        shade = np.where(c > 0, 1 + 0.14 * facing, 1 - 0.14 * facing).astype(np.float32)
    else:
        edge = (b.width / 2 - np.abs(a) < 0.6) | (b.depth / 2 - np.abs(c) < 0.6)
        shade = np.where(edge, 0.8, 1.0).astype(np.float32)
    grain = 0.96 + 0.08 * _value_noise(canvas.u[win][roof], canvas.v[win][roof], 0.7, seed + 6)
    image[win][roof] = np.array(b.roof, np.float32) * (shade * grain)[:, None]


def render(world: World, date_index: int, canvas: Canvas, rng: np.random.Generator) -> np.ndarray:
    """One acquisition as uint8 RGB (3, H, W): the ground as it was on that date, seen in that date's light."""
    style, date = world.styles[date_index], world.dates[date_index]
    image = _fields(world, date_index, canvas.u, canvas.v)
    _draw_roads(image, world, canvas)
    shadow = np.zeros(image.shape[:2], bool)
    _draw_trees(image, world, style, canvas, shadow)
    _draw_buildings(image, world, date, style, canvas, shadow)
    image *= np.array(style.gain, np.float32)
    image += np.array(style.offset, np.float32)
    image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(style.noise)
    return np.clip(np.rint(image), 1, 255).astype(np.uint8).transpose(2, 0, 1)


def change_mask(world: World, date_a: str, date_b: str, canvas: Canvas) -> np.ndarray:
    """1 on the roofs of buildings that stand on exactly one of the two dates (shadows excluded)."""
    mask = np.zeros((canvas.grid.height, canvas.grid.width), np.uint8)
    changed = [b for b in world.buildings if b.exists_on(date_a) != b.exists_on(date_b)]
    for b, win in zip(changed, canvas.windows(_building_boxes(changed, 0.0)) if changed else []):
        if win is not None:
            mask[win] |= _on_roof(b, *_building_frame(b, canvas.u[win], canvas.v[win], world.origin))
    return mask
