"""Both dates on one grid, lazily: odc-stac reads and reprojects, dask defers the work.

``load_date`` turns the chosen scenes of one date into an RGB array on the 0-255 scale plus a
``valid`` mask (inside a footprint, not nodata, not cloud). ``load_pair`` stacks the two dates
into the dataset that ``store.write_scenes`` saves as ``scenes.zarr``.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

import numpy as np
import odc.stac
import xarray as xr
from odc.geo.geobox import GeoBox

from .bands import RGB, band_metadata, raster_bands
from .errors import CatalogError
from .radiometry import Radiometry
from .remote import configure_remote_loads, is_remote
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
    mask = rule.mask
    shared = shared_asset(items, rule.bands)
    names = ([shared.key] if shared else list(rule.bands)) + ([mask.band] if mask else [])
    if any(is_remote(a.href) for i in items for a in i.assets.values()):
        configure_remote_loads()  # range requests, a few retries, and no waiting for ever on a silent server
    try:
        data = odc.stac.load(
            [_with_band_counts(item) for item in items], bands=names, geobox=grid, chunks={"x": chunk, "y": chunk},
            groupby=lambda item, parsed, index: 0,  # one date: every chosen scene fuses into one slice
            preserve_original_order=True,  # the first (best) scene wins where scenes overlap
            resampling={"*": "bilinear", **({mask.band: "nearest"} if mask else {})},
            fail_on_error=True, **({"stac_cfg": shared.odc_config()} if shared else {}),
        ).isel(time=0)
    except (ValueError, KeyError) as err:
        raise CatalogError(f"cannot load bands {names} of Item(s) {', '.join(repr(i.id) for i in items)}: {err}; "
                           "check the Items' assets and their projection metadata (proj:code, proj:shape, "
                           "proj:transform)") from None

    def raw_band(k: int, band: str) -> xr.DataArray:
        if shared:  # one read of the asset's tiles for all three bands
            return data[shared.key].isel(band=shared.indices[k]).drop_vars("band", errors="ignore")
        return data[band]

    valid = xr.ones_like(raw_band(0, rule.bands[0]), dtype=bool)
    channels = []
    for k, band in enumerate(rule.bands):
        raw = raw_band(k, band)
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
    """A copy odc-stac can load as the Item means it: its multi-band assets list one ``raster:bands``
    entry per band, so that odc-stac reads all of them (NAIP's 4-band ``image`` has ``eo:bands``
    only; odc-stac would assume one), and an integer band's NaN nodata, which no integer can equal,
    is left out (odc-stac failed on it: "cannot convert float NaN to integer")."""
    patched = None
    for key, asset in item.assets.items():
        bands = band_metadata(asset)
        if len(bands) > 1 and not raster_bands(asset):
            patched = patched or item.clone()
            patched.assets[key].extra_fields["raster:bands"] = [{} for _ in bands]
        if any(_integer_with_nan_nodata(band) for band in raster_bands(asset)):
            patched = patched or item.clone()
            patched.assets[key].extra_fields["raster:bands"] = [
                {k: v for k, v in band.items() if k != "nodata"} if _integer_with_nan_nodata(band) else band
                for band in raster_bands(patched.assets[key])]
    return patched or item


def _integer_with_nan_nodata(band: dict) -> bool:
    nodata = band.get("nodata")
    is_nan = isinstance(nodata, float) and np.isnan(nodata) or str(nodata).lower() == "nan"
    return is_nan and str(band.get("data_type", "")).startswith(("uint", "int"))


@dataclass(frozen=True)
class SharedAsset:
    """The RGB bands as bands ``indices`` (0-based) of one multi-band asset ``key`` of every item."""

    key: str
    indices: tuple[int, ...]
    count: int
    data_type: str
    nodata: float | None

    def odc_config(self) -> dict:
        """odc-stac's configuration that loads the asset as one (band, y, x) variable."""
        return {"*": {"assets": {self.key: {"data_type": self.data_type, "nodata": self.nodata,
                                            "dims": ["band", "y", "x"]}},
                      "dims": {"band": self.count}}}


def shared_asset(items: list, bands: tuple[str, ...]) -> SharedAsset | None:
    """Where every item holds all of ``bands`` (``asset.N`` names) in one multi-band asset, of one
    data type and nodata for all its bands (the demo's and NAIP's RGB, a "visual" COG), that asset;
    else None.

    Loaded band by band, such an asset is read three times: each band's read decodes the whole
    pixel-interleaved tile, and each read opens the file afresh, so no tile is reused. That was
    most of the loading's CPU time (an 8192² date: 4.4 s against 1.7 s for one read of the three
    bands, the same pixels). Bands that are assets of their own (Sentinel-2's) are read one by one.
    """
    keys = {band.rsplit(".", 1)[0] for band in bands}
    if len(keys) != 1 or any("." not in band for band in bands):
        return None
    key = keys.pop()
    found = set()
    for item in items:
        asset = item.assets.get(key)
        raster = raster_bands(asset) if asset is not None else []
        kinds = {(b.get("data_type"), b.get("nodata")) for b in raster}
        if asset is None or len(raster) != len(band_metadata(asset)) or len(kinds) != 1 or None in next(iter(kinds))[:1]:
            return None  # bands of several types, or not described: band by band, as odc-stac sees them
        found.add((len(raster), *next(iter(kinds))))
    if len(found) != 1:
        return None
    count, data_type, nodata = found.pop()
    return SharedAsset(key, tuple(int(band.rsplit(".", 1)[1]) - 1 for band in bands), count, data_type, nodata)


def _to_byte_scale(raw: xr.DataArray, rule: Radiometry) -> xr.DataArray:
    if (rule.scale, rule.offset, rule.value_range) == (1.0, 0.0, (0.0, 255.0)) and raw.dtype == np.uint8:
        # bytes already: the same values as through float32, without four bytes a pixel to make
        # and read again (computing an 8192² pair: 7.8 -> 7.2 s of CPU)
        return raw
    low, high = rule.value_range
    value = raw.astype(np.float32) * rule.scale + rule.offset
    return ((value - low) / (high - low) * 255.0).clip(0, 255).round()


def _utc_naive(iso: str) -> dt.datetime:
    """An ISO time in UTC without its offset, as numpy's datetime64 takes it (an offset such as +05:00
    made numpy warn, on the terminal, that it has no representation of time zones)."""
    when = dt.datetime.fromisoformat(iso)
    return (when.astimezone(dt.timezone.utc) if when.tzinfo else when).replace(tzinfo=None)


def load_pair(before: DateChoice, after: DateChoice, rules: tuple[list[Radiometry], list[Radiometry]], grid: GeoBox,
              chunk: int) -> xr.Dataset:
    """The dataset saved as scenes.zarr: ``image`` (time, band, y, x) uint8 and ``valid`` (time, y, x)."""
    images, masks = zip(*(load_date(choice, date_rules, grid, chunk) for choice, date_rules in zip((before, after), rules)))
    times = [np.datetime64(_utc_naive(choice.records[0].datetime), "ns") for choice in (before, after)]
    dataset = xr.Dataset(
        {"image": xr.concat(images, dim="time"), "valid": xr.concat(masks, dim="time")},
    ).assign_coords(time=("time", times))
    # Band names live in an attribute: string coordinates have no stable zarr v3 encoding yet.
    dataset["image"].attrs.update(description="RGB on the model's 0-255 scale; 0 where not valid",
                                  bands=",".join(RGB), dates="before,after")
    dataset["valid"].attrs.update(description="observed: inside a footprint, not nodata, not cloud")
    dataset.attrs["scene_choice"] = json.dumps({"before": before.to_dict(), "after": after.to_dict()})
    return dataset.transpose("time", "band", "y", "x")
