"""Window plans equal the step-by-step pad, roll and split; kept tables stay bounded and fresh."""

from __future__ import annotations

import pytest
import torch
from timm.models.swin_transformer import window_partition, window_reverse

from dsqnet import caches
from dsqnet.caches import cached, cached_constant
from dsqnet.windows import build_plan


@pytest.mark.parametrize("height, width, shift", [(10, 13, 3), (14, 7, 0), (16, 16, 3), (5, 9, 3)])
def test_one_gather_is_pad_roll_and_split_and_one_more_undoes_them(height, width, shift):
    window, channels = 7, 4
    x = torch.randn(2, height, width, channels)
    padded = torch.nn.functional.pad(x, (0, 0, 0, (-width) % window, 0, (-height) % window))
    rolled = torch.roll(padded, shifts=(-shift, -shift), dims=(1, 2))
    expected = window_partition(rolled, (window, window)).reshape(2, -1, channels)  # batch-major windows
    plan = build_plan(height, width, window, shift, torch.device("cpu"))
    tokens = torch.nn.functional.pad(x.reshape(2, height * width, channels), (0, 0, 0, 1))
    windows = tokens.index_select(1, plan.gather)
    torch.testing.assert_close(windows, expected, rtol=0, atol=0)
    # Back: merge the windows, roll back, crop -- for any per-token result, here the windows times 2.
    merged = window_reverse((2 * expected).reshape(-1, window, window, channels), (window, window),
                            padded.shape[1], padded.shape[2])
    back = torch.roll(merged, shifts=(shift, shift), dims=(1, 2))[:, :height, :width]
    torch.testing.assert_close((2 * windows).index_select(1, plan.scatter).view_as(x), back, rtol=0, atol=0)
    assert plan.num_windows == padded.shape[1] * padded.shape[2] // window**2
    assert (plan.shift_mask is None) == (shift == 0)


def test_constants_are_built_once_and_large_or_old_ones_are_not_kept(monkeypatch):
    builds = []

    def build(n: int):
        return lambda: builds.append(n) or torch.zeros(n)

    assert cached_constant(("test", 8), build(8)) is cached_constant(("test", 8), build(8))
    assert builds == [8]
    monkeypatch.setattr(caches, "MAX_KEPT_BYTES", 100)
    cached_constant(("test", 100), build(100)), cached_constant(("test", 100), build(100))  # 400 bytes: rebuilt
    assert builds == [8, 100, 100]
    monkeypatch.setattr(caches, "MAX_CONSTANTS", 2)
    for n in (1, 2, 3):
        cached_constant(("test", n), build(n))
    assert ("test", 8) not in caches._CONSTANTS and ("test", 3) in caches._CONSTANTS


def test_derived_values_follow_their_sources_and_never_hide_gradients():
    owner = torch.nn.Linear(3, 3)
    weight = owner.weight

    def double():
        return 2 * weight

    with torch.no_grad():
        first = cached(owner, "double", (weight,), double)
        assert cached(owner, "double", (weight,), double) is first
        weight.add_(1.0)  # an optimiser step, a load_state_dict: in place
        second = cached(owner, "double", (weight,), double)
    assert second is not first
    torch.testing.assert_close(second, 2 * weight.detach())
    cached(owner, "double", (weight,), double).sum().backward()  # grad enabled: built afresh, on the graph
    torch.testing.assert_close(weight.grad, torch.full_like(weight, 2.0))
