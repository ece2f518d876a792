"""A flow's parameters declared once: the signature Prefect (and Python) see is the request model's.

Each flow's parameters, types, defaults and descriptions live in one pydantic model
(``DetectRequest``, ...). The command line makes its options from that model's fields, and
``takes_parameters_of`` gives the flow function the same fields as its signature, so the
deployment's parameter schema and ``help()`` cannot drift from what the model checks.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, TypeVar

from pydantic import BaseModel

FunctionT = TypeVar("FunctionT", bound=Callable[..., Any])


def takes_parameters_of(request_model: type[BaseModel]) -> Callable[[FunctionT], FunctionT]:
    """Give a ``def flow(**params)`` the keyword parameters of ``request_model``, defaults included."""
    def declare(function: FunctionT) -> FunctionT:
        fields = request_model.model_fields
        parameters = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY,
                                        default=inspect.Parameter.empty if field.is_required() else field.default,
                                        annotation=field.annotation) for name, field in fields.items()]
        returns = inspect.signature(function).return_annotation
        function.__signature__ = inspect.Signature(parameters, return_annotation=returns)  # type: ignore[attr-defined]
        function.__annotations__ = {**{name: field.annotation for name, field in fields.items()}, "return": returns}
        return function
    return declare
