"""Regions and dates: what a user names, turned into geometries and time windows.

A region is a lon/lat bbox (``"16.3,48.1,16.5,48.3"``), a GeoJSON geometry (inline or a file), or
the name of an entry in a regions file (YAML: ``name: {geometry: <GeoJSON>, watch_zones: {...},
collection: <STAC collection id or list>, monitor: {...}}``; any other key is refused, as a misspelt
key would otherwise be ignored).
A date is a day plus a tolerance: scenes up to ``tolerance_days`` either side count as that date.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import shapely
import shapely.ops
import yaml
from shapely.geometry import box, mapping, shape
from shapely.geometry.base import BaseGeometry

from .errors import CatalogError

DEFAULT_TOLERANCE_DAYS = 15
MAX_SPAN_DEGREES = 20.0  # wider, and one UTM grid no longer holds the region (and no run could finish)
# what a regions file's entry may hold; `monitor` is read by flows/monitoring/config.py
REGION_KEYS = ("geometry", "watch_zones", "collection", "monitor")


@dataclass(frozen=True)
class Region:
    """A named area in EPSG:4326 (lon/lat), with optional watch zones inside it."""

    name: str
    geometry: BaseGeometry
    watch_zones: dict[str, BaseGeometry] = field(default_factory=dict)
    collections: tuple[str, ...] = ()  # the STAC collection(s) to search for it, when its regions file says

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        return tuple(self.geometry.bounds)  # type: ignore[return-value]

    @property
    def described(self) -> str:
        """The region as messages name it: its name and bbox (W, S, E, N), so a swapped bbox shows."""
        return f"{self.name} (" + ", ".join(f"{v:.4f}" for v in self.bbox) + ")"

    def to_geojson(self) -> dict[str, Any]:
        return mapping(self.geometry)


@dataclass(frozen=True)
class DateWindow:
    """A target day and the window of acquisition dates accepted for it."""

    day: dt.date
    tolerance_days: int = DEFAULT_TOLERANCE_DAYS

    @property
    def start(self) -> dt.datetime:
        return dt.datetime.combine(self.day - dt.timedelta(days=self.tolerance_days), dt.time.min, dt.timezone.utc)

    @property
    def end(self) -> dt.datetime:
        return dt.datetime.combine(self.day + dt.timedelta(days=self.tolerance_days), dt.time.max, dt.timezone.utc)

    def distance_days(self, when: dt.datetime) -> float:
        """How far an acquisition is from the target day (noon UTC), in days."""
        target = dt.datetime.combine(self.day, dt.time(12), dt.timezone.utc)
        return abs((when - target).total_seconds()) / 86400.0

    def __str__(self) -> str:
        return f"{self.day.isoformat()} +-{self.tolerance_days} d"


def parse_date(text: str | dt.date, tolerance_days: int = DEFAULT_TOLERANCE_DAYS) -> DateWindow:
    if isinstance(text, dt.datetime):
        return DateWindow(text.date(), tolerance_days)
    if isinstance(text, dt.date):
        return DateWindow(text, tolerance_days)
    try:
        return DateWindow(dt.date.fromisoformat(str(text).strip()), tolerance_days)
    except ValueError:
        raise CatalogError(f"date {text!r} is not an ISO date such as 2024-06-30") from None


def date_pair(before: str | dt.date, after: str | dt.date, tolerance_days: int = DEFAULT_TOLERANCE_DAYS) -> tuple[DateWindow, DateWindow]:
    """The two date windows of a change query, checked to be in order and apart."""
    first, second = parse_date(before, tolerance_days), parse_date(after, tolerance_days)
    if second.day == first.day:
        raise CatalogError(f"before and after are the same day ({first.day}); change needs two dates")
    if second.day < first.day:
        raise CatalogError(f"dates are reversed: before {first.day} is later than after {second.day}; swap them")
    if first.end >= second.start:
        raise CatalogError(
            f"the date windows overlap ({first} and {second}): one scene could serve as both dates; "
            "use dates further apart or a smaller tolerance"
        )
    return first, second


def parse_region(spec: str | dict | BaseGeometry, regions_file: str | Path | None = None) -> Region:
    """A region from a bbox string, GeoJSON (dict, text or file) or a name in ``regions_file``."""
    if isinstance(spec, BaseGeometry):
        return Region("region", _valid(spec, "the given geometry"))
    if isinstance(spec, dict):
        name = spec.get("id") or (spec.get("properties") or {}).get("name") or "region"
        return Region(str(name), _geometry_from_geojson(spec, "the given GeoJSON"))
    text = str(spec).strip()
    if regions_file is not None and not text.startswith("{") and not Path(text).is_file():
        regions = load_regions(regions_file)
        if text in regions:
            return regions[text]
        if not _looks_like_bbox(text):
            raise CatalogError(f"region {text!r} is not in {regions_file}; it names: {', '.join(sorted(regions)) or 'nothing'}")
    if _looks_like_bbox(text):
        return Region(f"bbox({text})", _bbox_geometry(text))
    if text.startswith("{"):
        try:
            return Region("region", _geometry_from_geojson(json.loads(text), "the given GeoJSON"))
        except json.JSONDecodeError as err:
            raise CatalogError(f"region is not valid GeoJSON: {err}") from None
    path = Path(text)
    if path.is_file():
        return Region(path.stem, _geojson_file(path, f"region file {path}", str(path)))
    hint = f" or a name in {regions_file}" if regions_file else " or a name in a regions file (--regions FILE)"
    raise CatalogError(
        f"region {text!r} is neither a lon/lat bbox 'minlon,minlat,maxlon,maxlat', GeoJSON, a GeoJSON file{hint}"
    )


def load_regions(path: str | Path) -> dict[str, Region]:
    """All regions of a YAML regions file: ``name: {geometry: GeoJSON, watch_zones: {zone: GeoJSON}}``."""
    path = Path(path)
    if not path.is_file():
        raise CatalogError(f"regions file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8-sig")) or {}
    except yaml.YAMLError as err:
        raise CatalogError(f"regions file {path} is not valid YAML ({yaml_problem(err)})") from None
    if not isinstance(data, dict):
        raise CatalogError(f"regions file {path} must map region names to {{geometry: ..., watch_zones: ...}}")
    regions = {}
    for name, entry in data.items():
        if not isinstance(entry, dict) or "geometry" not in entry:
            raise CatalogError(f"region {name!r} in {path} has no 'geometry' (GeoJSON in lon/lat)")
        _check_keys(entry, name, path)
        geometry = _geometry_in_file(entry["geometry"], f"region {name!r} in {path}", path)
        watch_zones = entry.get("watch_zones") or {}
        if not isinstance(watch_zones, dict):
            raise CatalogError(f"region {name!r} in {path}: watch_zones must map zone names to GeoJSON geometries "
                               f"(watch_zones: {{harbour: {{type: Polygon, coordinates: ...}}}}), got {watch_zones!r}")
        zones = {z: _geometry_in_file(g, f"watch zone {z!r} of {name!r} in {path}", path)
                 for z, g in watch_zones.items()}
        regions[str(name)] = Region(str(name), geometry, zones, _collections(entry.get("collection"), name, path))
    return regions


def _check_keys(entry: dict, name: Any, path: Path) -> None:
    """A key no reader takes (``settings:`` for ``monitor:``, ``watchzones:``) would otherwise be
    ignored, and the region watched with none of the settings its author wrote."""
    unknown = [str(key) for key in entry if key not in REGION_KEYS]
    if unknown:
        close = difflib.get_close_matches(unknown[0], REGION_KEYS, n=1)
        guess = f" (did you mean {close[0]!r}?)" if close else ""
        raise CatalogError(f"region {name!r} in {path} has the unknown key {unknown[0]!r}{guess}; "
                           f"a region takes {', '.join(REGION_KEYS)}")


def _collections(value: Any, name: str, path: Path) -> tuple[str, ...]:
    """A region's ``collection``: one id or a list of them."""
    if value is None:
        return ()
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
        raise CatalogError(f"region {name!r} in {path}: collection must be a STAC collection id or a list of them, "
                           f"got {value!r}")
    return tuple(n.strip() for n in names)


def _looks_like_bbox(text: str) -> bool:
    parts = text.replace(" ", "").split(",")
    if len(parts) != 4:
        return False
    try:
        [float(p) for p in parts]
    except ValueError:
        return False
    return True


def _bbox_geometry(text: str) -> BaseGeometry:
    west, south, east, north = (float(p) for p in text.replace(" ", "").split(","))
    if not (-180 <= west < east <= 180 and -90 <= south < north <= 90):
        raise CatalogError(
            f"bbox {text!r} is not minlon,minlat,maxlon,maxlat in degrees with min < max "
            "(longitude -180..180, latitude -90..90)"
        )
    return _valid(box(west, south, east, north), f"bbox {text!r}")


def _geometry_in_file(value: Any, source: str, regions_file: Path) -> BaseGeometry:
    """A regions file's geometry: GeoJSON written inline, or, as ``--region`` takes them, a bbox
    string or a GeoJSON file (relative to the regions file)."""
    if not isinstance(value, str):
        return _geometry_from_geojson(value, source)
    text = value.strip()
    if _looks_like_bbox(text):
        return _bbox_geometry(text)
    path = regions_file.parent / text
    if not path.is_file():
        raise CatalogError(f"{source} is the text {text!r}, which is neither a bbox 'minlon,minlat,maxlon,maxlat' "
                           f"nor a GeoJSON file ({path} does not exist); write the geometry as GeoJSON "
                           "({type: Polygon, coordinates: ...}), a bbox, or the path of a GeoJSON file")
    return _geojson_file(path, f"{source}: {path}", f"{source} ({path})")


def _geojson_file(path: Path, named: str, source: str) -> BaseGeometry:
    """The geometry of a GeoJSON file (``named`` in its parse error, ``source`` in the others); a
    byte-order mark, as Windows editors save UTF-8, is read past."""
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:
        raise CatalogError(f"{named} is not valid GeoJSON: {err}") from None
    return _geometry_from_geojson(data, source)


def _geometry_from_geojson(data: Any, source: str) -> BaseGeometry:
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features") or []
        if not features:
            raise CatalogError(f"{source} is an empty FeatureCollection")
        geometry = shapely.union_all([_shape(f, source) for f in features])
        return _valid(_to_lonlat(geometry, data, source), source)
    return _valid(_to_lonlat(_shape(data, source), data, source), source)


def _shape(data: Any, source: str) -> BaseGeometry:
    """The shapely geometry of a GeoJSON geometry or Feature, in the coordinates it is written in."""
    if isinstance(data, dict) and data.get("type") == "Feature":
        if data.get("geometry") is None:
            raise CatalogError(f"{source} is a Feature with no geometry (null); give it the region's polygon")
        data = data["geometry"]
    if not isinstance(data, dict):
        raise CatalogError(f"{source} is not a GeoJSON geometry (a mapping with type and coordinates), but "
                           f"{type(data).__name__} {str(data)[:60]!r}")
    try:
        return shape(data)
    except Exception as err:  # shapely raises several types for malformed GeoJSON
        raise CatalogError(f"{source} is not a GeoJSON geometry: {err}") from None


def _to_lonlat(geometry: BaseGeometry, data: Any, source: str) -> BaseGeometry:
    """``geometry`` in lon/lat, when ``data`` names another CRS in GeoJSON's old ``crs`` member (as
    older QGIS and GDAL exports write it: ``{"type": "name", "properties": {"name":
    "urn:ogc:def:crs:EPSG::32639"}}``); GeoJSON today is lon/lat, and what is named so is left alone."""
    named = (data.get("crs") or {}).get("properties", {}).get("name") if isinstance(data, dict) else None
    if not named:
        return geometry
    from pyproj import CRS, Transformer
    from pyproj.exceptions import CRSError

    try:
        crs = CRS.from_user_input(named)
    except CRSError:
        raise CatalogError(f"{source} names the CRS {named!r}, which is not one PROJ knows; reproject it to "
                           "lon/lat (EPSG:4326) and drop its crs member") from None
    if crs.is_geographic and crs.equals(CRS.from_epsg(4326), ignore_axis_order=True):
        return geometry
    to_lonlat = Transformer.from_crs(crs, 4326, always_xy=True)
    return shapely.ops.transform(to_lonlat.transform, geometry)


def _valid(geometry: BaseGeometry, source: str) -> BaseGeometry:
    if geometry.is_empty:
        raise CatalogError(f"{source} is empty; a region must be a polygon")
    if not geometry.is_valid:
        raise CatalogError(f"{source} is an invalid geometry ({shapely.is_valid_reason(geometry)}); fix it, e.g. with shapely.make_valid")
    if geometry.area == 0:
        raise CatalogError(f"{source} has no area; a region must be a polygon")
    west, south, east, north = geometry.bounds
    if west < -180 or east > 180 or south < -90 or north > 90:
        raise CatalogError(f"{source} lies outside lon/lat bounds ({geometry.bounds}); regions are given in EPSG:4326 degrees")
    if east - west > MAX_SPAN_DEGREES or north - south > MAX_SPAN_DEGREES:
        across = ("; if it crosses the antimeridian (180 degrees), make it one region on each side"
                  if west < -170 and east > 170 else "")
        raise CatalogError(f"{source} spans {east - west:.1f} degrees of longitude by {north - south:.1f} of latitude; "
                           f"a region may span at most {MAX_SPAN_DEGREES:g} (one grid in one UTM zone holds no more): "
                           f"split it into smaller regions{across}")
    return geometry


def yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's error in one line: where, then what (its own text spans lines and quotes the source)."""
    mark = getattr(err, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    return where + (getattr(err, "problem", None) or str(err).splitlines()[0])
