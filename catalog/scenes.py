"""Both dates on one grid, lazily: odc-stac reads and reprojects, dask defers the work.

``load_date`` turns the chosen scenes of one date into an RGB array on the 0-255 scale plus a
``valid`` mask (inside a footprint, not nodata, not cloud). ``load_pair`` stacks the two dates
into the dataset that ``store.write_scenes`` saves as ``scenes.zarr``.
"""

from __future__ import annotations

import json

import numpy as np
import odc.stac
import xarray as xr
from odc.geo.geobox import GeoBox

from .bands import BandSpec, scale_offset
from .errors import CatalogError
from .selection import DateChoice

RGB = ["red", "green", "blue"]


def load_date(choice: DateChoice, spec: BandSpec, grid: GeoBox, chunk: int) -> tuple[xr.DataArray, xr.DataArray]:
    """(image uint8 (band, y, x), valid bool (y, x)) for one date, lazy."""
    items = list(choice.items)
    names = list(spec.bands) + ([spec.mask_band] if spec.mask_band else [])
    try:
        data = odc.stac.load(
            items, bands=names, geobox=grid, chunks={"x": chunk, "y": chunk},
            groupby=lambda item, parsed, index: 0,  # one date: every chosen scene fuses into one slice
            preserve_original_order=True,  # the first (best) scene wins where scenes overlap
            resampling={"*": "bilinear", **({spec.mask_band: "nearest"} if spec.mask_band else {})},
            fail_on_error=True,
        ).isel(time=0)
    except ValueError as err:
        raise CatalogError(f"cannot load bands {names} of {[i.id for i in items]}: {err}") from None

    valid = xr.ones_like(data[spec.bands[0]], dtype=bool)
    channels = []
    for band in spec.bands:
        raw = data[band]
        nodata = raw.attrs.get("nodata")
        if raw.dtype.kind == "f":
            valid = valid & ~np.isnan(raw)
        if nodata is not None and not np.isnan(nodata):
            valid = valid & (raw != nodata)
        channels.append(_to_byte_scale(raw, items[0], band, spec))
    if spec.mask_band:
        valid = valid & ~data[spec.mask_band].isin(list(spec.mask_invalid))
    image = xr.concat(channels, dim="band").assign_coords(band=np.arange(len(RGB)))
    image = image.where(valid, 0).astype(np.uint8)
    return image, valid


def _to_byte_scale(raw: xr.DataArray, item, band: str, spec: BandSpec) -> xr.DataArray:
    if spec.scaling == "none":
        # bytes already: the same values as through float32, without four bytes a pixel to make
        # and read again (2 of the 8 s of CPU that computing an 8192² pair took)
        return raw if raw.dtype == np.uint8 else raw.astype(np.float32)
    scale, offset = scale_offset(item, band, spec)
    low, high = spec.value_range
    value = raw.astype(np.float32) * scale + offset
    return ((value - low) / (high - low) * 255.0).clip(0, 255).round()


def load_pair(before: DateChoice, after: DateChoice, spec: BandSpec, grid: GeoBox, chunk: int) -> xr.Dataset:
    """The dataset saved as scenes.zarr: ``image`` (time, band, y, x) uint8 and ``valid`` (time, y, x)."""
    images, masks = zip(*(load_date(choice, spec, grid, chunk) for choice in (before, after)))
    times = [np.datetime64(choice.records[0].datetime.replace("+00:00", ""), "ns") for choice in (before, after)]
    dataset = xr.Dataset(
        {"image": xr.concat(images, dim="time"), "valid": xr.concat(masks, dim="time")},
    ).assign_coords(time=("time", times))
    # Band names live in an attribute: string coordinates have no stable zarr v3 encoding yet.
    dataset["image"].attrs.update(description="RGB on the model's 0-255 scale; 0 where not valid",
                                  bands=",".join(RGB), dates="before,after")
    dataset["valid"].attrs.update(description="observed: inside a footprint, not nodata, not cloud")
    dataset.attrs["scene_choice"] = json.dumps({"before": before.to_dict(), "after": after.to_dict()})
    return dataset.transpose("time", "band", "y", "x")
