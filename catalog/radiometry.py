"""How one Item's pixel values become reflectance, and which pixels were not observed.

The model sees reflectance 0-0.3 stretched to 0-255 (or 8-bit RGB as it is), so both dates must
reach that scale by their own product's rule, read from the Item's metadata and never guessed:

- **Sentinel-2** (L2A surface reflectance, L1C top of atmosphere): reflectance = DN x 1e-4, and
  from processing baseline 04.00 on, ESA stores DN + 1000, so minus 0.1. Earth Search removes that
  offset from the pixels of many L2A items itself and says so with
  ``earthsearch:boa_offset_applied: true`` while the ``raster:bands`` offset may still say -0.1:
  the flag is the truth. Reprocessed archives (Earth Search's Collection 1) carry the baseline of
  the reprocessing, so the same rule holds. Clouds come from the SCL classes.
- **Landsat Collection 2 Level-2**: reflectance = DN x 2.75e-5 - 0.2 (USGS), or what
  ``raster:bands`` says; clouds from the ``qa_pixel`` bits.
- **8-bit RGB** (NAIP, aerial GeoTIFFs, the demo): values already are the model's scale.
- **Any other catalog** whose bands state a ``raster:bands`` scale: that scale and offset.

Two dates go together only at the same processing level; ``check_one_scale`` says why not.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import pystac

from .bands import BandSource, BandSpec, raster_bands, rgb_sources
from .errors import CatalogError
from .remote import is_remote, remote_failure, remote_reads
from .signing import signed_href

SURFACE = "surface reflectance"
TOP_OF_ATMOSPHERE = "top-of-atmosphere reflectance"
STATED = "reflectance (scale stated by the catalog)"
EIGHT_BIT = "8-bit RGB"
REFLECTANCE_RANGE = (0.0, 0.3)  # reflectance mapped onto 0-255 for the model
SENTINEL2_OFFSET_BASELINE = (4, 0)
SCL_NOT_OBSERVED = (0, 1, 3, 8, 9, 10)  # no data, saturated/defective, cloud shadow, cloud medium/high, cirrus
QA_PIXEL_NOT_OBSERVED_BITS = (0, 1, 2, 3, 4)  # fill, dilated cloud, cirrus, cloud, cloud shadow


@dataclass(frozen=True)
class Mask:
    """Pixels of ``band`` that are not observed: classes ``values``, or any of the set ``bits``."""

    band: str
    kind: str  # "classes" or "bits"
    values: tuple[int, ...]


@dataclass(frozen=True)
class Radiometry:
    """One Item's bands, scale and mask, and the sentence that says which rule gave them."""

    product: str
    level: str
    bands: tuple[str, str, str]
    scale: float
    offset: float
    value_range: tuple[float, float]
    rule: str
    collection: str | None = None
    baseline: str | None = None
    mask: Mask | None = None
    provider: str | None = None

    @property
    def load_names(self) -> list[str]:
        return list(self.bands) + ([self.mask.band] if self.mask else [])

    def same_scale_as(self, other: "Radiometry") -> bool:
        return (self.scale, self.offset, self.value_range, self.mask) == (other.scale, other.offset,
                                                                          other.value_range, other.mask)

    def to_dict(self) -> dict:
        record = asdict(self)
        record["mask"] = asdict(self.mask) if self.mask else None
        return record


def radiometry_of(item: pystac.Item, override: BandSpec | None = None) -> Radiometry:
    """The rule for ``item``, from its own metadata (or from ``override``)."""
    if override is not None:
        return _from_spec(item, override)
    sources = rgb_sources(item)
    if _is_sentinel2(item):
        rule = _sentinel2(item, sources)
    elif _is_landsat(item):
        rule = _landsat(item, sources)
    else:
        rule = _stated_or_8bit(item, sources)
    if not (math.isfinite(rule.scale) and rule.scale != 0 and math.isfinite(rule.offset)):
        raise CatalogError(f"Item {item.id!r} states the scale {rule.scale:g} and offset {rule.offset:g} in its "
                           "raster:bands, which would make every pixel the same (or not a number): the model would "
                           "see no land; correct the Item's raster:bands scale and offset")
    return rule


def check_one_scale(before: list[Radiometry], after: list[Radiometry]) -> None:
    """Refuse a pair whose dates cannot be put on one scale, with the reason."""
    levels = {r.level for r in (*before, *after)} - {STATED}
    if len(levels) > 1:
        described = "; ".join(f"{when}: {', '.join(sorted({f'{r.product} ({r.level})' for r in group}))}"
                              for when, group in (("before", before), ("after", after)))
        raise CatalogError(
            f"the two dates cannot be put on one scale ({described}): the model would see a change of "
            "processing level as a change of the land. Choose one collection with --collection, "
            "e.g. the surface-reflectance one for both dates")


def _sentinel2(item: pystac.Item, sources) -> Radiometry:
    props = item.properties
    product_type = str(props.get("s2:product_type", ""))
    collection = str(item.collection_id or "").lower()
    l1c = "1C" in product_type or "l1c" in collection
    level = TOP_OF_ATMOSPHERE if l1c else SURFACE
    band = _first_raster_band(item, sources[0])
    scale = float(band.get("scale", 1e-4))
    baseline = props.get("s2:processing_baseline")
    parsed = _baseline(baseline)
    if props.get("earthsearch:boa_offset_applied") is True:
        offset = 0.0
        rule = (f"Earth Search removed the +1000 offset of baseline {baseline} from these pixels "
                f"(earthsearch:boa_offset_applied: true): reflectance = DN x {scale:g}")
    elif parsed is not None:
        offset = -0.1 if parsed >= SENTINEL2_OFFSET_BASELINE else 0.0
        rule = (f"processing baseline {baseline} "
                + (f">= 04.00 stores DN + 1000: reflectance = DN x {scale:g} - 0.1" if offset
                   else f"< 04.00 stores no offset: reflectance = DN x {scale:g}"))
    elif "offset" in band:
        offset = float(band["offset"])
        rule = f"no processing baseline; raster:bands states reflectance = DN x {scale:g} + {offset:g}"
    else:
        raise CatalogError(
            f"Sentinel-2 item {item.id} states neither s2:processing_baseline nor a raster:bands offset, so "
            "whether its pixels carry the +1000 offset of baseline 04.00 cannot be told; use a catalog that "
            "publishes them (Earth Search, Planetary Computer), or add one of the two to the items (from Python, "
            "a catalog.BandSpec can state the scale and offset instead)")
    scl = _asset_key(item, "scl")
    mask = Mask(scl, "classes", SCL_NOT_OBSERVED) if scl else None
    if mask is None and not l1c:
        rule += "; no SCL asset, so clouds are not masked"
    elif mask is None:
        rule += "; L1C has no scene classification, so clouds are not masked"
    return Radiometry("Sentinel-2 " + ("L1C" if l1c else "L2A"), level, _names(sources), scale, offset,
                      REFLECTANCE_RANGE, rule, item.collection_id, baseline, mask, _provider(item))


def _landsat(item: pystac.Item, sources) -> Radiometry:
    correction = str(item.properties.get("landsat:correction") or "")
    if not correction and item.id.count("_") >= 2:
        correction = item.id.split("_")[1]  # LC09_L2SP_...: the product level is the second field of the id
    if correction and not correction.upper().startswith("L2"):
        raise CatalogError(
            f"Landsat item {item.id} is {correction} (Level-1 digital numbers, not reflectance); "
            "use the Level-2 collection (landsat-c2-l2)")
    band = _first_raster_band(item, sources[0])
    scale, offset = float(band.get("scale", 2.75e-5)), float(band.get("offset", -0.2))
    stated = "raster:bands states" if "scale" in band else "USGS Collection 2 Level-2 definition:"
    qa = _asset_key(item, "qa_pixel")
    rule = f"{stated} reflectance = DN x {scale:g} + {offset:g}"
    rule += "; clouds from qa_pixel bits 0-4" if qa else "; no qa_pixel asset, so clouds are not masked"
    return Radiometry("Landsat Collection 2 Level-2", SURFACE, _names(sources), scale, offset, REFLECTANCE_RANGE,
                      rule, item.collection_id, None, Mask(qa, "bits", QA_PIXEL_NOT_OBSERVED_BITS) if qa else None,
                      _provider(item))


def _stated_or_8bit(item: pystac.Item, sources) -> Radiometry:
    band = _first_raster_band(item, sources[0])
    if "scale" in band:
        scale, offset = float(band["scale"]), float(band.get("offset", 0.0))
        return Radiometry("reflectance", STATED, _names(sources), scale, offset, REFLECTANCE_RANGE,
                          f"raster:bands states reflectance = DN x {scale:g} + {offset:g}", item.collection_id,
                          provider=_provider(item))
    data_type = band.get("data_type") or _read_data_type(item, sources[0])
    if data_type != "uint8":
        raise CatalogError(
            f"item {item.id} ({item.collection_id}): band {sources[0].name} is {data_type} without a raster:bands "
            "scale, so its values cannot be put on the model's scale; add raster:bands scale/offset "
            "(reflectance) to the items (from Python, a catalog.BandSpec can state them instead)")
    return Radiometry(EIGHT_BIT, EIGHT_BIT, _names(sources), 1.0, 0.0, (0.0, 255.0),
                      "8-bit values are already the model's 0-255 scale", item.collection_id,
                      provider=_provider(item))


def _from_spec(item: pystac.Item, spec: BandSpec) -> Radiometry:
    missing = [b for b in (*spec.bands, *([spec.mask_band] if spec.mask_band else []))
               if b not in item.assets and b.rsplit(".", 1)[0] not in item.assets]
    if missing:
        raise CatalogError(f"item {item.id} has no band {', '.join(missing)}; its assets are "
                           f"{', '.join(sorted(item.assets))}. Name bands as asset keys, or asset.N for band N")
    if spec.scaling == "none":
        return Radiometry("as given", EIGHT_BIT, spec.bands, 1.0, 0.0, spec.value_range,
                          "BandSpec: values used as they are", item.collection_id,
                          mask=Mask(spec.mask_band, "classes", spec.mask_invalid) if spec.mask_band else None)
    asset = item.assets.get(spec.bands[0])
    band = (raster_bands(asset) if asset is not None else [{}]) or [{}]
    scale = float(band[0].get("scale", 1e-4))
    offset = band[0].get("offset")
    if offset is None:
        parsed = _baseline(item.properties.get("s2:processing_baseline"))
        offset = -0.1 if spec.sentinel2_baseline_offset and parsed and parsed >= SENTINEL2_OFFSET_BASELINE else 0.0
    return Radiometry("as given", STATED, spec.bands, scale, float(offset), spec.value_range,
                      f"BandSpec: reflectance = DN x {scale:g} + {float(offset):g}", item.collection_id,
                      item.properties.get("s2:processing_baseline"),
                      Mask(spec.mask_band, "classes", spec.mask_invalid) if spec.mask_band else None)


def _is_sentinel2(item: pystac.Item) -> bool:
    platform = str(item.properties.get("platform", "")).lower()
    return (platform.startswith("sentinel-2") or "s2:product_type" in item.properties
            or str(item.collection_id or "").lower().startswith("sentinel-2"))


def _is_landsat(item: pystac.Item) -> bool:
    platform = str(item.properties.get("platform", "")).lower()
    return (platform.startswith("landsat") or any(k.startswith("landsat:") for k in item.properties)
            or str(item.collection_id or "").lower().startswith("landsat"))


def _first_raster_band(item: pystac.Item, source: BandSource) -> dict:
    bands = raster_bands(item.assets[source.asset])
    return dict(bands[source.index - 1]) if len(bands) >= source.index else {}


def _read_data_type(item: pystac.Item, source: BandSource) -> str:
    """The data type from the file's header (one small read) when the metadata does not say."""
    import rasterio

    href = item.assets[source.asset].get_absolute_href() or item.assets[source.asset].href
    try:
        with remote_reads(), rasterio.open(signed_href(href)) as dataset:
            return dataset.dtypes[source.index - 1]
    except (rasterio.errors.RasterioIOError, IndexError) as err:
        problem = remote_failure([str(err)], href) if is_remote(href) else None
        raise CatalogError(f"asset {source.asset!r} of Item {item.id!r} ({href}) cannot be read: "
                           f"{problem or err}") from None


def _asset_key(item: pystac.Item, key: str) -> str | None:
    return next((k for k in item.assets if k.lower() == key), None)


def _names(sources) -> tuple[str, str, str]:
    return tuple(source.name for source in sources)  # type: ignore[return-value]


def _baseline(text) -> tuple[int, int] | None:
    try:
        major, minor = (int(part) for part in str(text).split(".")[:2])
    except (TypeError, ValueError):
        return None
    return major, minor


def _provider(item: pystac.Item) -> str | None:
    """Who published the Item, where its metadata tells."""
    if any(key.startswith("earthsearch:") for key in item.properties):
        return "Earth Search (Element 84)"
    hrefs = " ".join([link.href for link in item.links] + [a.href for a in item.assets.values()])
    if "planetarycomputer" in hrefs or ".blob.core.windows.net" in hrefs:
        return "Planetary Computer"
    if "usgs.gov" in hrefs:
        return "USGS"
    return None
