"""The parameters of ``detect-changes``, checked before any work starts, with messages a user can act on.

The same model serves the command line, ``flow(...)`` calls and ``prefect deployment run -p ...``, so
a mistake gets the same explanation wherever it was made.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from catalog.errors import CatalogError
from dsqnet.inference.defaults import BATCH_SIZE, DEFAULT_THRESHOLD, STRIDE, WINDOW
from flows.blocks.store import CHUNK
from flows.runtime.user_errors import UserError, numbered

RequestT = TypeVar("RequestT", bound=BaseModel)


def _geojson_text(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, dict) else value  # `-p region={...}` arrives parsed


def _device(value: str) -> str:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", value):
        raise ValueError(f"{value!r} is not a device; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    return value


def _crs(value: str | None) -> str | None:
    if value is not None:
        from catalog.grid import known_crs

        try:
            known_crs(value)
        except CatalogError as err:
            raise ValueError(str(err).removeprefix("target CRS ")) from None
    return value


def _collection_list(value: Any) -> list[str] | None:
    """One collection id, several comma-separated, or a list (a deployment's JSON)."""
    if value is None or value == []:
        return None
    names = value.split(",") if isinstance(value, str) else list(value)
    names = [str(n).strip() for n in names if str(n).strip()]
    for name in names:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:-]*", name):
            raise ValueError(f"{name!r} is not a STAC collection id (letters, digits, '.', '_', '-', ':')")
    return names or None


def _iso_date(value: Any) -> str | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(str(value)[:10]).isoformat()  # a date from YAML, or text
    except ValueError:
        raise ValueError(f"{value!r} is not a date; write it as YYYY-MM-DD, e.g. 2023-06-21") from None


def _run_name(value: str | None) -> str | None:
    """A folder name inside ``--out``: a name with a separator or a leading dot would put the run
    elsewhere (``../x``) or among the runs' caches (``.cache``)."""
    if value and ("/" in value or "\\" in value or value.startswith(".")):
        raise ValueError(f"{value!r} is not a plain folder name; the run folder goes inside --out, so name it "
                         "without '/' or '\\' and not starting with '.', e.g. 'bratislava-2023'")
    return value


# Field types shared by the flows' parameter models.
RegionText = Annotated[str | dict | None, BeforeValidator(_geojson_text)]  # a dict: GeoJSON given parsed
IsoDate = Annotated[str | None, BeforeValidator(_iso_date)]
DeviceText = Annotated[str, AfterValidator(_device)]
CrsText = Annotated[str | None, AfterValidator(_crs)]
RunName = Annotated[str | None, AfterValidator(_run_name)]
CollectionList = Annotated[list[str] | None, BeforeValidator(_collection_list)]

DEMO_BEFORE, DEMO_AFTER = "2021-06-14", "2023-06-21"


class ParameterError(UserError, ValueError):
    """Parameters that cannot work together or alone; the message names each one and the fix."""


class DetectRequest(BaseModel):
    """What a detect run is asked to do. ``region``, ``before`` and ``after`` all unset means the demo."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # nan, inf: "a finite number"

    region: RegionText = Field(None, description="lon/lat bbox 'W,S,E,N', GeoJSON (inline or file), or a name in the regions file")
    before: IsoDate = Field(None, description="the earlier date, YYYY-MM-DD")
    after: IsoDate = Field(None, description="the later date, YYYY-MM-DD")
    catalog: str | None = Field(None, description="a static STAC catalog (file or URL) or a STAC API URL")
    collection: CollectionList = Field(None, description="search only this STAC collection (repeatable, e.g. "
                                       "sentinel-2-c1-l2a); default: the one that suits the model, said in the log")
    regions: str | None = Field(None, description="a regions YAML file that names regions and watch zones")
    model: str | None = Field(None, description="a model file (.safetensors, or an authors' .pth) or a registry "
                              "reference name@VERSION / name@ALIAS / name; default: the demo model")
    registry: str | None = Field(None, description="model registry folder for references in model; default "
                                 "$DSQNET_REGISTRY, else ~/.local/share/dsqnet/registry")
    out: str = Field("runs", description="folder where the run folder is written")
    run_name: RunName = Field(None, description="name of the run folder; default region_before_after")
    tolerance_days: int = Field(15, ge=0, le=366, description="days either side of each date that still count as it")
    crs: CrsText = Field(None, description="target CRS, e.g. EPSG:32633; default the UTM zone of the region")
    resolution: float | None = Field(None, gt=0, description="target pixel size in CRS units; default the finest native")
    threshold: float = Field(DEFAULT_THRESHOLD, gt=0, lt=1, description="probability from which a pixel counts as changed")
    min_area_m2: float = Field(10.0, ge=0, description="smallest change polygon kept, square metres")
    window: int = Field(WINDOW, ge=32, description="network window, pixels")
    stride: int = Field(STRIDE, ge=1, description="step between windows, pixels (the paper: 256)")
    batch_size: int = Field(BATCH_SIZE, ge=1, description="windows per forward pass")
    block_size: int = Field(4096, ge=CHUNK, description=f"pixels per side of a block of work, a multiple of {CHUNK}")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="autocast precision on the workers")
    device: DeviceText = Field("auto", description="'auto' (a GPU when the worker has one), 'cpu' or 'cuda:N'")
    workers: int | None = Field(None, ge=1, description="local Dask workers; default one per GPU or cores/4")
    dask_address: str | None = Field(None, description="scheduler of an existing Dask cluster, e.g. tcp://host:8786")
    truth: str | None = Field(None, description="true change (GeoParquet polygons or a raster) to score the run against")

    @field_validator("block_size")
    @classmethod
    def _whole_chunks(cls, value: int) -> int:
        if value % CHUNK:
            raise ValueError(f"must be a multiple of {CHUNK} (blocks write whole chunks of change_prob.zarr), "
                             f"e.g. {max(CHUNK, round(value / CHUNK) * CHUNK)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "DetectRequest":
        given = [name for name in ("region", "before", "after") if getattr(self, name) is not None]
        if given and len(given) < 3:
            missing = [n for n in ("region", "before", "after") if n not in given]
            raise ValueError(f"give region, before and after together (missing: {', '.join(missing)}), "
                             "or none of them to run the embedded demo")
        if given and not self.catalog:
            raise ValueError("a region needs a catalog to search: give catalog (a STAC catalog file or API URL)")
        if self.stride > self.window:
            raise ValueError(f"stride {self.stride} is larger than the window {self.window}: pixels would be skipped")
        if self.before and self.after and self.before >= self.after:
            raise ValueError(f"before ({self.before}) must be earlier than after ({self.after})")
        return self

    @property
    def is_demo(self) -> bool:
        return self.region is None


def parse_request(**params) -> DetectRequest:
    """A ``DetectRequest``, or a ``ParameterError`` that lists every problem in plain words."""
    return parse_parameters(DetectRequest, "detect", params)


def parse_parameters(request_model: type[RequestT], what: str, params: dict[str, Any]) -> RequestT:
    """``request_model(**params)``, or a ``ParameterError`` that names every problem in plain words,
    on one line (numbered when there are several)."""
    try:
        return request_model(**params)
    except ValidationError as err:
        problems = []
        for problem in err.errors():
            where = ".".join(str(p) for p in problem["loc"]) or "parameters"
            message = problem["msg"].removeprefix("Value error, ")
            if problem["type"] == "extra_forbidden":
                message = f"unknown parameter; known ones: {', '.join(request_model.model_fields)}"
            problems.append(f"{where}: {message}")
        if len(problems) == 1:
            raise ParameterError(f"invalid {what} parameter {problems[0]}") from None
        raise ParameterError(f"invalid {what} parameters, {len(problems)} problems: {numbered(problems)}") from None
