"""The parameters of ``retrain-model``, checked before any work starts, with messages a user can act on.

One model serves ``dsqnet retrain``, ``retrain_model(...)`` calls and deployment runs. New labels come
one of two ways, as for ``evaluate-model``: a benchmark folder (``data``), or scenes plus label
polygons (``catalog`` + ``region`` + ``before`` + ``after`` + ``labels``), cut into tiles.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dsqnet.inference.defaults import STRIDE, WINDOW
from flows.params.evaluate import EvaluateRequest, check_labeled_data
from flows.params.detect import DeviceText, IsoDate, RegionText, RunName, parse_parameters


class RetrainRequest(BaseModel):
    """What a retrain-model run is asked to do."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # nan, inf: "a finite number"

    name: str = Field(..., description="registered model to retrain: the candidate is registered under this name")
    base: str | None = Field(None, description="model to fine-tune and to beat; default NAME@production")
    registry: str | None = Field(None, description="model registry folder; default $DSQNET_REGISTRY, else "
                                                   "~/.local/share/dsqnet/registry")
    data: str | None = Field(None, description="new labels as a benchmark folder (instead of scenes + labels)")
    layout: str = Field("generic", description="layout of data, holdout and reference: levir-cd, s2looking, svcd, "
                                               "dsifn or generic (A/, B/, label/)")
    split: str | None = Field(None, description="split folder of data to learn from (default: the whole folder, "
                                                "or its train split for layouts with splits)")
    catalog: str | None = Field(None, description="scenes route: a static STAC catalog (file) or a STAC API URL")
    region: RegionText = Field(None, description="scenes route: lon/lat bbox 'W,S,E,N', GeoJSON, or a name in regions")
    regions: str | None = Field(None, description="scenes route: a regions YAML file")
    before: IsoDate = Field(None, description="scenes route: the earlier date, YYYY-MM-DD")
    after: IsoDate = Field(None, description="scenes route: the later date, YYYY-MM-DD")
    labels: str | None = Field(None, description="scenes route: GeoParquet polygons of the true change (any CRS)")
    tolerance_days: int = Field(15, ge=0, le=366, description="scenes route: days either side of each date")
    tile_size: int = Field(256, ge=32, description="scenes route: tiles of this many pixels become the labeled pairs")
    holdout: str | None = Field(None, description="a benchmark folder to judge models on; default: a share of the "
                                                  "new labels, held out from training")
    holdout_fraction: float = Field(0.25, gt=0, lt=1, description="share of the new pairs held out when no holdout "
                                                                  "folder is given")
    reference: str | None = Field(None, description="a frozen reference benchmark folder: the candidate must not be "
                                                    "worse on it than the model it would replace")
    config: str = Field("fine-tune", description="training recipe: a bundled config name or a YAML file")
    max_iters: int | None = Field(None, ge=1, description="training steps (overrides the config)")
    batch_size: int | None = Field(None, ge=1, description="crops per step (overrides the config)")
    lr: float | None = Field(None, gt=0, description="peak learning rate (overrides the config)")
    seed: int = Field(0, description="seed of the holdout split and of training")
    margin: float = Field(0.01, ge=0, le=1, description="holdout F1 the candidate must gain over the base to be "
                                                        "promoted")
    reference_tolerance: float = Field(0.0, ge=0, le=1, description="reference F1 the candidate may lose and still "
                                                                    "be promoted")
    alias: str = Field("production", description="alias the candidate gets when it is promoted")
    window: int = Field(WINDOW, ge=32, description="evaluation window, pixels (the paper: 512)")
    stride: int = Field(STRIDE, ge=1, description="evaluation stride, pixels (the paper: 256)")
    eval_batch_size: int = Field(4, ge=1, description="windows per batch when the base and the candidate are scored")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="autocast precision of evaluation")
    device: DeviceText = Field("auto", description="'auto' (a GPU when there is one), 'cpu' or 'cuda:N'")
    out: str = Field("runs", description="folder where the retrain folder (retrain.json) is written")
    run_name: RunName = Field(None, description="name of the retrain folder; default retrain_<name>_<inputs hash>")

    @field_validator("layout")
    @classmethod
    def _layout(cls, value: str) -> str:
        return EvaluateRequest._layout(value)

    @model_validator(mode="after")
    def _one_route(self) -> RetrainRequest:
        check_labeled_data(self, "the new labels")
        return self

    @property
    def route(self) -> str:
        return "benchmark" if self.data else "scenes"

    @property
    def base_ref(self) -> str:
        return self.base or f"{self.name}@production"


def parse_retrain_request(**params) -> RetrainRequest:
    """A ``RetrainRequest``, or a ``ParameterError`` that lists every problem in plain words."""
    return parse_parameters(RetrainRequest, "retrain-model", params)
