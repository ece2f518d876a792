"""Which bands make the RGB input, and how their values become the model's 0-255 scale.

Collections store colour differently: the demo and NAIP as 8-bit RGB, Sentinel-2 L2A as 16-bit
reflectance with a scale, and since processing baseline 04.00 an offset of -0.1 that older
metadata often omits. A ``BandSpec`` says what to read and how to scale it, per collection.
"""

from __future__ import annotations

from dataclasses import dataclass

import pystac

from .errors import CatalogError


@dataclass(frozen=True)
class BandSpec:
    """``bands``: names as odc-stac knows them (asset keys, or eo:bands names of a multi-band asset).

    ``scaling``: ``"none"`` when values already lie on 0-255, or ``"reflectance"`` to apply the
    STAC ``raster:bands`` scale/offset and map ``value_range`` to 0-255.
    ``mask_band``/``mask_invalid``: a classification band (Sentinel-2's SCL) whose listed values
    (no data, saturated, cloud shadow, clouds, cirrus) make a pixel "not observed".
    """

    bands: tuple[str, str, str]
    scaling: str = "none"
    value_range: tuple[float, float] = (0.0, 255.0)
    mask_band: str | None = None
    mask_invalid: tuple[int, ...] = ()
    sentinel2_baseline_offset: bool = False


PRESETS: dict[str, BandSpec] = {
    "demo-rgb": BandSpec(("red", "green", "blue")),
    "naip": BandSpec(("red", "green", "blue")),
    # Earth Search and Planetary Computer name Sentinel-2 assets differently; both are listed.
    "sentinel-2-l2a": BandSpec(("B04", "B03", "B02"), scaling="reflectance", value_range=(0.0, 0.3),
                               mask_band="SCL", mask_invalid=(0, 1, 3, 8, 9, 10), sentinel2_baseline_offset=True),
    "sentinel-2-l2a-earth-search": BandSpec(("red", "green", "blue"), scaling="reflectance", value_range=(0.0, 0.3),
                                            mask_band="scl", mask_invalid=(0, 1, 3, 8, 9, 10),
                                            sentinel2_baseline_offset=True),
}


def band_spec_for(items: list[pystac.Item], override: BandSpec | None = None) -> BandSpec:
    """The spec of the items' collection, or ``override``; an unknown collection must be given one."""
    if override is not None:
        return override
    collections = {item.collection_id for item in items}
    if len(collections) > 1:
        raise CatalogError(f"scenes come from several collections {sorted(map(str, collections))}; choose one")
    collection = next(iter(collections))
    if collection in PRESETS:
        spec = PRESETS[collection]
        if collection == "sentinel-2-l2a" and "B04" not in items[0].assets and "red" in items[0].assets:
            spec = PRESETS["sentinel-2-l2a-earth-search"]
        return spec
    raise CatalogError(
        f"no band settings for collection {collection!r}; known: {', '.join(sorted(PRESETS))}. "
        "Pass a BandSpec (the three RGB band names and their scaling)."
    )


def scale_offset(item: pystac.Item, band: str, spec: BandSpec) -> tuple[float, float]:
    """``value = DN * scale + offset`` for one band of one item (identity when not scaling)."""
    if spec.scaling == "none":
        return 1.0, 0.0
    raster_bands = (item.assets.get(band).extra_fields.get("raster:bands") if band in item.assets else None) or [{}]
    scale = float(raster_bands[0].get("scale", 1e-4))
    offset = raster_bands[0].get("offset")
    if offset is None:
        offset = -0.1 if spec.sentinel2_baseline_offset and _baseline(item) >= (4, 0) else 0.0
    return scale, float(offset)


def _baseline(item: pystac.Item) -> tuple[int, int]:
    text = str(item.properties.get("s2:processing_baseline", "0.0"))
    try:
        major, minor = (int(p) for p in text.split(".")[:2])
    except ValueError:
        return (0, 0)
    return major, minor
