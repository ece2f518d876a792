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

from .bands import RGB, band_metadata, raster_bands
from .errors import CatalogError
from .radiometry import Radiometry
from .selection import DateChoice


def load_date(choice: DateChoice, rules: list[Radiometry], grid: GeoBox, chunk: int) -> tuple[xr.DataArray, xr.DataArray]:
    """(image uint8 (band, y, x), valid bool (y, x)) for one date, lazy; ``rules[i]`` is item i's radiometry.

    Scenes that share a rule are fused in one read; scenes with different rules (two processing
    baselines in one mosaic) are scaled apart and then combined, the earlier (better) scene winning
    where both are valid.
    """
    image = valid = None
    for rule, items in _groups(list(choice.items), rules):
        part, observed = _load_group(items, rule, grid, chunk)
        if image is None:
            image, valid = part, observed
        else:
            image = image.where(valid, part)
            valid = valid | observed
    image = image.where(valid, 0).astype(np.uint8)
    return image, valid


def _groups(items: list, rules: list[Radiometry]) -> list[tuple[Radiometry, list]]:
    groups: list[tuple[Radiometry, list]] = []
    for item, rule in zip(items, rules):
        for known, members in groups:
            if known.same_scale_as(rule) and known.load_names == rule.load_names:
                members.append(item)
                break
        else:
            groups.append((rule, [item]))
    return groups


def _load_group(items: list, rule: Radiometry, grid: GeoBox, chunk: int) -> tuple[xr.DataArray, xr.DataArray]:
    names = rule.load_names
    mask = rule.mask
    if any(str(a.href).startswith(("http://", "https://")) for i in items for a in i.assets.values()):
        odc.stac.configure_rio(cloud_defaults=True)  # GDAL reads remote COGs by range requests, no directory listing
    try:
        data = odc.stac.load(
            [_with_band_counts(item) for item in items], bands=names, geobox=grid, chunks={"x": chunk, "y": chunk},
            groupby=lambda item, parsed, index: 0,  # one date: every chosen scene fuses into one slice
            preserve_original_order=True,  # the first (best) scene wins where scenes overlap
            resampling={"*": "bilinear", **({mask.band: "nearest"} if mask else {})},
            fail_on_error=True,
        ).isel(time=0)
    except (ValueError, KeyError) as err:
        raise CatalogError(f"cannot load bands {names} of Item(s) {', '.join(repr(i.id) for i in items)}: {err}; "
                           "check the Items' assets and their projection metadata (proj:code, proj:shape, "
                           "proj:transform)") from None

    valid = xr.ones_like(data[rule.bands[0]], dtype=bool)
    channels = []
    for band in rule.bands:
        raw = data[band]
        nodata = raw.attrs.get("nodata")
        if raw.dtype.kind == "f":
            valid = valid & ~np.isnan(raw)
        if nodata is not None and not np.isnan(nodata):
            valid = valid & (raw != nodata)
        channels.append(_to_byte_scale(raw, rule))
    if mask is not None:
        flags = data[mask.band]
        if mask.kind == "bits":
            bits = sum(1 << b for b in mask.values)
            valid = valid & ((flags.fillna(1).astype(np.uint32) & bits) == 0)
        else:
            valid = valid & ~flags.isin(list(mask.values))
    image = xr.concat(channels, dim="band").assign_coords(band=np.arange(len(RGB)))
    return image, valid


def _with_band_counts(item):
    """A copy whose multi-band assets list one ``raster:bands`` entry per band, so that odc-stac
    reads all of them (NAIP's 4-band ``image`` has ``eo:bands`` only; odc-stac would assume one)."""
    patched = None
    for key, asset in item.assets.items():
        bands = band_metadata(asset)
        if len(bands) > 1 and not raster_bands(asset):
            patched = patched or item.clone()
            patched.assets[key].extra_fields["raster:bands"] = [{} for _ in bands]
    return patched or item


def _to_byte_scale(raw: xr.DataArray, rule: Radiometry) -> xr.DataArray:
    low, high = rule.value_range
    value = raw.astype(np.float32) * rule.scale + rule.offset
    return ((value - low) / (high - low) * 255.0).clip(0, 255).round()


def load_pair(before: DateChoice, after: DateChoice, rules: tuple[list[Radiometry], list[Radiometry]], grid: GeoBox,
              chunk: int) -> xr.Dataset:
    """The dataset saved as scenes.zarr: ``image`` (time, band, y, x) uint8 and ``valid`` (time, y, x)."""
    images, masks = zip(*(load_date(choice, date_rules, grid, chunk) for choice, date_rules in zip((before, after), rules)))
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
