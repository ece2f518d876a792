"""Tensors a forward pass needs but need not recompute: constants per size, and parameter-derived
tensors while their parameters stay unchanged.

Small tables (index grids, window plans, attention biases) cost a dozen tiny operations each to
build; built at every forward they dominate the operation count of a network whose real work is a
few dozen matrix products. While ``torch.compile`` traces, neither helper keeps what it builds, so
that a compiled graph leaves no traced values behind.

Memory stays bounded: a value over ``MAX_KEPT_BYTES`` is rebuilt at every call rather than kept
(a whole large image at once, not the network's windows), and only the most recently used values
are kept (``MAX_CONSTANTS`` constants, ``MAX_PER_OWNER`` derived values per module).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Callable, Hashable, TypeVar

import torch

T = TypeVar("T")

MAX_KEPT_BYTES = 64 << 20
MAX_CONSTANTS = 256
MAX_PER_OWNER = 4

_CONSTANTS: OrderedDict[Hashable, object] = OrderedDict()


def cached_constant(key: Hashable, build: Callable[[], T]) -> T:
    """``build()`` once per ``key``, which must name everything the value depends on (sizes, device).

    While ``torch.compile`` traces, a value built before (by an eager call) enters the graph as a
    constant; a missing one is built inside the graph and not kept.
    """
    value = _CONSTANTS.get(key)
    if torch.compiler.is_compiling():
        return build() if value is None else value  # type: ignore[return-value]
    if value is None:
        value = _plain(build)
        _keep(_CONSTANTS, key, value, MAX_CONSTANTS)
    else:
        _CONSTANTS.move_to_end(key)
    return value  # type: ignore[return-value]


def _keep(store: OrderedDict, key: Hashable, value: object, capacity: int) -> None:
    """Keep ``value`` unless it is too large, dropping the least recently used beyond ``capacity``."""
    if _nbytes(value) > MAX_KEPT_BYTES:
        return
    store[key] = value
    while len(store) > capacity:
        store.popitem(last=False)


def _nbytes(value: object) -> int:
    """Bytes of the tensors in ``value`` (a tensor, or tuples, lists and dataclasses of them)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sum(_nbytes(getattr(value, f.name)) for f in dataclasses.fields(value))
    return 0


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
    store: OrderedDict = owner.__dict__.setdefault("_derived_cache", OrderedDict())
    hit = store.get(key)
    if hit is not None and hit[0] == stamp:
        store.move_to_end(key)
        return hit[1]
    value = _plain(build)
    store.pop(key, None)
    _keep(store, key, (stamp, value), MAX_PER_OWNER)
    return value
