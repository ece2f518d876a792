"""Tensors a forward pass needs but need not recompute: constants per size, and parameter-derived
tensors while their parameters stay unchanged.

Small tables (index grids, window plans, attention biases) cost a dozen tiny operations each to
build; built at every forward they dominate the operation count of a network whose real work is a
few dozen matrix products. While ``torch.compile`` traces, neither helper keeps what it builds, so
that a compiled graph leaves no traced values behind.
"""

from __future__ import annotations

from typing import Callable, Hashable, TypeVar

import torch

T = TypeVar("T")

_CONSTANTS: dict[Hashable, object] = {}


def cached_constant(key: Hashable, build: Callable[[], T]) -> T:
    """``build()`` once per ``key``, which must name everything the value depends on (sizes, device).

    While ``torch.compile`` traces, a value built before (by an eager call) enters the graph as a
    constant; a missing one is built inside the graph and not kept.
    """
    value = _CONSTANTS.get(key)
    if value is None:
        if torch.compiler.is_compiling():
            return build()
        value = _CONSTANTS[key] = _plain(build)
    return value  # type: ignore[return-value]


def _plain(build: Callable[[], T]) -> T:
    """``build()`` as ordinary tensors without autograd history, even inside ``torch.inference_mode``:
    a value kept may serve a later forward that autograd records (training after a validation)."""
    with torch.inference_mode(False), torch.no_grad():
        return build()


def cached(owner: object, key: Hashable, sources: tuple[torch.Tensor, ...], build: Callable[[], T]) -> T:
    """``build()``, kept on ``owner`` under ``key`` while the ``sources`` it reads stay unchanged.

    For tensors derived from parameters (an attention bias from its table): reused in inference,
    rebuilt when a source changes in place (training steps, ``load_state_dict``) and never kept
    where gradients must reach the sources, or while ``torch.compile`` traces (the compiled graph
    computes it itself).
    """
    if torch.compiler.is_compiling() or (torch.is_grad_enabled() and any(s.requires_grad for s in sources)):
        return build()
    try:
        stamp = tuple((s.data_ptr(), s._version) for s in sources)
    except RuntimeError:  # inference tensors keep no version counter: nothing to check a copy against
        return build()
    store: dict = owner.__dict__.setdefault("_derived_cache", {})
    hit = store.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    value = _plain(build)
    store[key] = (stamp, value)
    return value
