"""The parameters of ``evaluate-model``, checked before any work starts, with messages a user can act on.

One model serves ``dsqnet evaluate-model``, ``evaluate_model_flow(...)`` calls and deployment runs.
The labeled data comes one of two ways, and exactly one must be given:

- ``data``: a benchmark folder (``layout`` levir-cd, s2looking, svcd, dsifn or generic; ``split``);
- ``catalog`` + ``region`` + ``before`` + ``after`` + ``labels``: scenes as detect-changes takes them,
  with GeoParquet polygons of the true change rasterised onto the scenes' grid.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dsqnet.inference.defaults import BATCH_SIZE, STRIDE, WINDOW
from flows.params.detect import CrsText, DeviceText, IsoDate, RegionText, RunName, parse_parameters

SCENE_FIELDS = ("catalog", "region", "before", "after", "labels")


class EvaluateRequest(BaseModel):
    """What an evaluate-model run is asked to do."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # nan, inf: "a finite number"

    model: str | None = Field(None, description="a model file or a registry reference name@VERSION / name@ALIAS / "
                                                "name; default: the demo model")
    registry: str | None = Field(None, description="model registry folder for references in model; default "
                                                   "$DSQNET_REGISTRY, else ~/.local/share/dsqnet/registry")
    data: str | None = Field(None, description="a labeled benchmark folder (instead of scenes + labels)")
    layout: str = Field("generic", description="layout of data: levir-cd, s2looking, svcd, dsifn or generic "
                                               "(A/, B/, label/)")
    split: str | None = Field("test", description="split folder of data (ignored when a generic folder has none)")
    catalog: str | None = Field(None, description="scenes route: a static STAC catalog (file) or a STAC API URL")
    region: RegionText = Field(None, description="scenes route: lon/lat bbox 'W,S,E,N', GeoJSON, or a name in regions")
    regions: str | None = Field(None, description="scenes route: a regions YAML file")
    before: IsoDate = Field(None, description="scenes route: the earlier date, YYYY-MM-DD")
    after: IsoDate = Field(None, description="scenes route: the later date, YYYY-MM-DD")
    labels: str | None = Field(None, description="scenes route: GeoParquet polygons of the true change (any CRS)")
    tolerance_days: int = Field(15, ge=0, le=366, description="scenes route: days either side of each date")
    crs: CrsText = Field(None, description="scenes route: target CRS; default the UTM zone of the region")
    resolution: float | None = Field(None, gt=0, description="scenes route: target pixel size; default the finest")
    tile_size: int | None = Field(None, ge=32, description="scenes route: score tiles of this many pixels instead "
                                                           "of the region as one pair")
    window: int = Field(WINDOW, ge=32, description="network window, pixels (the paper: 512)")
    stride: int = Field(STRIDE, ge=1, description="step between windows, pixels (the paper: 256)")
    batch_size: int = Field(BATCH_SIZE, ge=1, description="windows per forward pass")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="autocast precision")
    device: DeviceText = Field("auto", description="'auto' (a GPU when there is one), 'cpu' or 'cuda:N'")
    iou_threshold: float = Field(0.5, gt=0, le=1, description="IoU from which a predicted object matches a true one")
    min_object_pixels: int = Field(1, ge=1, description="objects smaller than this (pixels) are not counted")
    out: str = Field("runs", description="folder where the evaluation folder (evaluation.json) is written")
    run_name: RunName = Field(None, description="name of the evaluation folder; default <model>_on_<data>")
    save_predictions: bool = Field(False, description="also write each predicted change map as a 0/255 PNG")
    record_metrics: bool = Field(False, description="also add the scores to the registry record of the model "
                                                    "(registry models only)")

    @field_validator("layout")
    @classmethod
    def _layout(cls, value: str) -> str:
        from dsqnet.data import LAYOUTS  # imports torch: only when a request is checked, not for --help

        if value not in LAYOUTS:
            raise ValueError(f"unknown layout {value!r}; use one of {', '.join(sorted(LAYOUTS))}")
        return value

    @model_validator(mode="after")
    def _one_route(self) -> EvaluateRequest:
        check_labeled_data(self, "the labeled data")
        if self.data and self.tile_size is not None:
            raise ValueError("tile_size cuts scenes into tiles; a benchmark folder (data) is scored as it is")
        return self

    @property
    def route(self) -> str:
        """``benchmark`` (a folder) or ``scenes`` (scenes + label polygons)."""
        return "benchmark" if self.data else "scenes"


def check_labeled_data(request: BaseModel, what: str) -> None:
    """Labeled data comes one way: ``data``, or every one of the scene fields; windows and dates make sense."""
    given = [name for name in SCENE_FIELDS if getattr(request, name) is not None]
    if request.data and given:
        raise ValueError(f"give either data (a benchmark folder) or scenes and labels, not both "
                         f"(data and {', '.join(given)} were given)")
    if not request.data and len(given) < len(SCENE_FIELDS):
        missing = [name for name in SCENE_FIELDS if name not in given]
        raise ValueError(f"give {what}: data (a benchmark folder), or catalog, region, before, after "
                         f"and labels (scenes and their true change; missing: {', '.join(missing)})")
    if request.stride > request.window:
        raise ValueError(f"stride {request.stride} is larger than the window {request.window}: pixels would be skipped")
    if request.before and request.after and request.before >= request.after:
        raise ValueError(f"before ({request.before}) must be earlier than after ({request.after})")


def parse_evaluate_request(**params) -> EvaluateRequest:
    """An ``EvaluateRequest``, or a ``ParameterError`` that lists every problem in plain words."""
    return parse_parameters(EvaluateRequest, "evaluate-model", params)
