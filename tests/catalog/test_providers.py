"""Each provider's Items, as published, give both dates on the model's scale, on the grid of the bands the model reads."""

from __future__ import annotations

import numpy as np
import pystac
import pytest
import rasterio.features
from shapely.geometry import box

from catalog import StaticCatalog, date_pair, open_scenes, parse_region, prepare_scenes
from catalog.grid import reproject
from tests.catalog.provider_scenes import (
    BUILT,
    CHANGE_PIXELS,
    FIELD,
    PROVIDER_CASES,
    region_of,
    scene_pair,
    truth_in_window,
)

EXPECTED_RULE = {
    "earth-search sentinel-2-l2a": "earthsearch:boa_offset_applied: true",
    "earth-search sentinel-2-c1-l2a": "baseline 05.11 >= 04.00",
    "earth-search sentinel-2-l1c": "baseline 05.09 >= 04.00",
    "planetary-computer sentinel-2-l2a": "baseline 05.10 >= 04.00",
    "planetary-computer landsat-c2-l2": "raster:bands states reflectance = DN x 2.75e-05 + -0.2",
    "usgs landsat-c2l2-sr": "USGS Collection 2 Level-2 definition",
    "planetary-computer naip": "8-bit values",
}


def _byte(rho: float) -> int:
    return int(round(rho / 0.3 * 255))


def _truth_mask(provider, grid_transform, grid_crs, shape, pixels):
    """The window's pixel box (rows, cols slices) as a mask on the run's grid."""
    window, crs = truth_in_window(provider)
    rows, cols = pixels
    x0, y0 = window * (cols.start, rows.start)
    x1, y1 = window * (cols.stop, rows.stop)
    polygon = reproject(box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)), crs, grid_crs)
    return rasterio.features.geometry_mask([polygon], shape, grid_transform, invert=True)


@pytest.mark.parametrize("case", sorted(PROVIDER_CASES))
def test_a_provider_pair_lands_on_the_model_scale_and_the_red_bands_grid(case, tmp_path):
    provider = PROVIDER_CASES[case]
    before_item, after_item = scene_pair(provider, tmp_path)
    path = tmp_path / "items.json"
    pystac.ItemCollection([before_item, after_item]).save_object(dest_href=str(path))
    before, after = date_pair("2021-06-15", "2022-06-15")
    region = parse_region(region_of(provider))
    result = prepare_scenes(region, before, after, StaticCatalog(path), tmp_path / "s.zarr", chunk=64)

    assert result.grid.resolution.x == provider.resolution  # the red band's, not the first asset's (aot: 20 m)
    ds = open_scenes(result.path)
    image, valid = ds["image"].values.astype(int), ds["valid"].values
    transform, crs = ds.rio.transform(), str(ds.rio.crs)
    changed = _truth_mask(provider, transform, crs, valid.shape[1:], CHANGE_PIXELS)
    field_after = valid[1] & ~_truth_mask(provider, transform, crs, valid.shape[1:], (slice(18, 38), slice(22, 42)))
    expected_field = np.array([_byte(v) for v in FIELD])
    for t, where in ((0, valid[0]), (1, field_after)):
        assert where.sum() > 500
        median = np.median(image[t][:, where], axis=1)
        assert np.abs(median - expected_field).max() <= 1, (t, median, expected_field)
    assert np.abs(np.median(image[1][:, changed & valid[1]], axis=1) - [_byte(v) for v in BUILT]).max() <= 1

    # The change found by differencing the two dates lies on the true change.
    found = (np.abs(image[1] - image[0]).max(axis=0) > 20) & valid[0] & valid[1]
    truth = changed & valid[0] & valid[1]
    iou = (found & truth).sum() / (found | truth).sum()
    assert iou >= 0.8, iou
    if provider.mask is not None:  # the cloud of the earlier date is not observed
        cloud = _truth_mask(provider, transform, crs, valid.shape[1:], (slice(5, 11), slice(5, 13)))
        assert not valid[0][cloud].any() and valid[1][cloud].all()
    rules = result.summary()["radiometry"]  # run.json's record of the rule applied to each scene
    assert EXPECTED_RULE[case] in rules["before"][0]["rule"] and EXPECTED_RULE[case] in rules["after"][0]["rule"]


def test_a_cloud_mask_on_one_date_only_is_warned_of(tmp_path):
    """An Item without its SCL asset loaded unmasked beside a masked date, without a word on the
    terminal: that date's clouds and shadows could read as change."""
    from catalog.prepare import choose_pair, cloud_mask_gap

    provider = PROVIDER_CASES["earth-search sentinel-2-l2a"]
    before_item, after_item = scene_pair(provider, tmp_path)
    region, (before, after) = parse_region(region_of(provider)), date_pair("2021-06-15", "2022-06-15")
    pystac.ItemCollection([before_item, after_item]).save_object(dest_href=str(tmp_path / "both.json"))
    assert cloud_mask_gap(*choose_pair(region, before, after, StaticCatalog(tmp_path / "both.json"))) is None
    del after_item.assets["scl"]
    pystac.ItemCollection([before_item, after_item]).save_object(dest_href=str(tmp_path / "one.json"))
    assert cloud_mask_gap(*choose_pair(region, before, after, StaticCatalog(tmp_path / "one.json"))) == (
        f"clouds are masked on some scenes but not on {after_item.id} (after), whose Item has no cloud-mask asset: "
        "its clouds and their shadows may show as change; check the Item, or choose other dates")


def test_a_scale_of_zero_is_refused_not_loaded_as_a_blank_image(tmp_path):
    """``raster:bands`` ``scale: 0`` loaded every pixel as 0, and the run ended with exit 0."""
    from catalog import CatalogError
    from catalog.radiometry import radiometry_of

    item, _ = scene_pair(PROVIDER_CASES["earth-search sentinel-2-l2a"], tmp_path)
    for asset in item.assets.values():
        for band in asset.extra_fields.get("raster:bands") or []:
            band["scale"] = 0
    with pytest.raises(CatalogError, match=rf"^Item '{item.id}' states the scale 0 and offset 0 in its raster:bands, "
                                           r"which would make every pixel the same \(or not a number\)"):
        radiometry_of(item)


def test_an_item_time_with_an_offset_loads_in_utc_without_a_warning(tmp_path):
    """A datetime written with +05:00 made numpy warn, on the terminal, of time zones it cannot hold."""
    import datetime as dt
    import warnings

    provider = PROVIDER_CASES["earth-search sentinel-2-l2a"]
    before_item, after_item = scene_pair(provider, tmp_path)
    before_item.datetime = dt.datetime.fromisoformat("2021-06-15T15:30:00+05:00")  # 10:30 UTC
    pystac.ItemCollection([before_item, after_item]).save_object(dest_href=str(tmp_path / "items.json"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        result = prepare_scenes(parse_region(region_of(provider)), *date_pair("2021-06-15", "2022-06-15"),
                                StaticCatalog(tmp_path / "items.json"), tmp_path / "s.zarr", chunk=64)
    assert str(open_scenes(result.path)["time"].values[0]) == "2021-06-15T10:30:00.000000000"


def test_an_integer_band_with_a_nan_nodata_loads(tmp_path):
    """odc-stac failed on it ("cannot convert float NaN to integer"), and the message blamed the
    projection metadata. No integer equals NaN: such a band has no nodata value."""
    provider = PROVIDER_CASES["earth-search sentinel-2-l2a"]
    before_item, after_item = scene_pair(provider, tmp_path)
    for key in ("red", "green", "blue"):
        before_item.assets[key].extra_fields["raster:bands"][0]["nodata"] = "nan"  # as STAC writes NaN in JSON
    pystac.ItemCollection([before_item, after_item]).save_object(dest_href=str(tmp_path / "items.json"))
    result = prepare_scenes(parse_region(region_of(provider)), *date_pair("2021-06-15", "2022-06-15"),
                            StaticCatalog(tmp_path / "items.json"), tmp_path / "s.zarr", chunk=64)
    ds = open_scenes(result.path)
    before_image, before_valid = ds["image"].values[0].astype(int), ds["valid"].values[0]
    assert before_valid.sum() > 500
    assert np.abs(np.median(before_image[:, before_valid], axis=1) - [_byte(v) for v in FIELD]).max() <= 1
