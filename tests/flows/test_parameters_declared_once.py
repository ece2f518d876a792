"""Each flow's parameters are declared once, in its request model; the flow and the CLI follow it."""

from __future__ import annotations

import inspect

import pytest

from flows.cli.main import build_parser
from flows.detect import detect_changes
from flows.evaluate import evaluate_model_flow
from flows.monitor import monitor_region
from flows.params.detect import DetectRequest
from flows.params.evaluate import EvaluateRequest
from flows.params.retrain import RetrainRequest
from flows.monitoring.config import MonitorRequest
from flows.params.signature import takes_parameters_of
from flows.retrain import retrain_model

FLOWS = [(detect_changes, DetectRequest), (evaluate_model_flow, EvaluateRequest), (retrain_model, RetrainRequest),
         (monitor_region, MonitorRequest)]


@pytest.mark.parametrize(("flow", "model"), FLOWS, ids=lambda x: getattr(x, "name", None) or x.__name__)
def test_a_flows_parameters_and_defaults_are_its_request_models(flow, model):
    signature = inspect.signature(flow.fn).parameters
    assert list(signature) == list(model.model_fields)
    for name, field in model.model_fields.items():
        expected = inspect.Parameter.empty if field.is_required() else field.default
        assert signature[name].default == expected, name
    schema = flow.parameters.model_dump()["properties"]  # what a deployment shows and checks
    assert set(schema) == set(model.model_fields)


def test_the_detect_command_line_defaults_come_from_the_model():
    parser = build_parser()
    detect = parser._subparsers._group_actions[0].choices["detect"]  # argparse keeps subcommands here
    flags = {action.dest: action for action in detect._actions}
    for name in ("threshold", "window", "stride", "block_size", "min_area_m2"):
        assert name in flags, name
        assert str(DetectRequest.model_fields[name].default) in flags[name].help


def test_a_required_field_stays_required():
    from pydantic import BaseModel

    class Request(BaseModel):
        name: str
        size: int = 3

    @takes_parameters_of(Request)
    def job(**params) -> dict:
        return params

    parameters = inspect.signature(job).parameters
    assert parameters["name"].default is inspect.Parameter.empty and parameters["size"].default == 3
