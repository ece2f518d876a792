"""The inputs a request names, checked before any work: they exist, can be read and fit together.

``parse_*_request`` checks the parameters themselves (types, ranges, combinations); ``check_inputs``
then looks at what they name: the region (a bbox, a GeoJSON file, a name in the regions file), the
dates, the catalog, the model (from its header: a DSQNet model, trained on RGB), the truth and label
files, the data folders, and the output folder (writable). Each problem is a user error that names
the parameter and the fix. The command line calls it before Prefect starts; each flow calls it
first, before any task, so a deployment run fails the same way in one line.

Nothing here downloads: a STAC API URL is only checked when the search runs.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from flows.params.detect import DetectRequest, ParameterError


def check_inputs(request: BaseModel) -> None:
    """Check what ``request`` (a ``DetectRequest``, ``EvaluateRequest`` or ``RetrainRequest``) names."""
    from flows.params.evaluate import EvaluateRequest
    from flows.params.retrain import RetrainRequest

    if isinstance(request, DetectRequest):
        if not request.is_demo:
            _check_scenes(request)
        _check_model(request.model, request.registry)
        _check_file(request.truth, "truth", "GeoParquet polygons or a raster of the true change")
        _check_truth(request.truth)
        _check_dask_scheduler(request.dask_address)
    elif isinstance(request, (EvaluateRequest, RetrainRequest)):
        if request.route == "scenes":
            _check_scenes(request)
            _check_file(request.labels, "labels", "GeoParquet polygons of the true change")
        else:
            _check_folder(request.data, "data", "a labeled benchmark folder")
        if isinstance(request, RetrainRequest):
            _check_folder(request.holdout, "holdout", "a labeled benchmark folder")
            _check_folder(request.reference, "reference", "a labeled benchmark folder")
            _check_model(request.base_ref, request.registry)
        else:
            _check_model(request.model, request.registry)
    _check_out(request.out)


def _check_scenes(request: BaseModel) -> None:
    from catalog import date_pair, open_source, parse_region

    parse_region(request.region, regions_file=request.regions)
    date_pair(request.before, request.after, request.tolerance_days)
    open_source(request.catalog)


def _check_model(model: str | None, registry: str | None) -> None:
    from flows.models.resolve import resolve_model

    resolve_model(model, registry=registry)


def _check_file(path: str | None, name: str, what: str) -> None:
    if path is not None and not Path(path).expanduser().is_file():
        raise ParameterError(f"{name}: {path} does not exist or is not a file; give {what}")


def _check_truth(path: str | None) -> None:
    """The truth reads and has a CRS: read only after the blocks, a damaged file failed the run at its
    end, in pyarrow's or GDAL's words."""
    if path is not None:
        truth_extent(path)


def truth_extent(path: str | Path) -> tuple[object, tuple[float, float, float, float] | None]:
    """The truth's CRS and bounds in it (None for a table with no polygons), or a ``ParameterError``
    that names the file: the one reading of a truth's header, for the checks before a run."""
    path = Path(path).expanduser()
    fix = "give GeoParquet polygons (.parquet) or a GeoTIFF of the true change"
    if path.suffix in (".parquet", ".geoparquet"):
        import geopandas as gpd

        try:
            polygons = gpd.read_parquet(path)
        except Exception as err:  # noqa: BLE001 - pyarrow and geopandas raise many types for a bad file
            raise ParameterError(f"truth: {path} cannot be read as GeoParquet ({str(err).splitlines()[0]}); "
                                 f"{fix}") from None
        crs, bounds = polygons.crs, None if polygons.empty else tuple(polygons.total_bounds)
    else:
        import rasterio

        try:
            with rasterio.open(path) as raster:
                crs, bounds = raster.crs, tuple(raster.bounds)
        except rasterio.errors.RasterioIOError as err:
            raise ParameterError(f"truth: {path} cannot be read as a raster ({err}); {fix}") from None
    if crs is None:
        raise ParameterError(f"truth: {path} has no CRS, so it cannot be put on the run's grid; write its CRS "
                             "into it (e.g. with rio edit-info --crs, or GeoDataFrame.set_crs)")
    return crs, bounds


def _check_folder(path: str | None, name: str, what: str) -> None:
    if path is not None and not Path(path).expanduser().is_dir():
        raise ParameterError(f"{name}: {path} does not exist or is not a folder; give {what}")


def _check_dask_scheduler(address: str | None, timeout_s: float = 5.0) -> None:
    """A scheduler answers at ``address`` (or at ``DSQNET_DASK_ADDRESS``): Dask itself would try for
    30 s and then report a timeout that names neither the parameter nor the fix."""
    import os
    import socket
    from urllib.parse import urlsplit

    from flows.workers.cluster import DASK_ADDRESS_ENV

    name = "dask_address" if address else DASK_ADDRESS_ENV
    address = address or os.environ.get(DASK_ADDRESS_ENV)
    if not address:
        return
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    if parts.scheme not in ("tcp", "tls") or not parts.hostname or parts.port is None:
        return  # another transport (inproc, ucx, ws): Dask says what it thinks of it
    try:
        socket.create_connection((parts.hostname, parts.port), timeout=timeout_s).close()
    except OSError as err:
        reason = "nothing listens there" if isinstance(err, ConnectionRefusedError) else (err.strerror or str(err))
        raise ParameterError(f"{name}: no Dask scheduler answers at {address} ({reason}); start the cluster "
                             "(dask scheduler, then dask worker on each machine) or leave it out for a local one") from None


def _check_out(out: str) -> None:
    from flows.outputs.run_folder import check_writable

    check_writable(Path(out))
