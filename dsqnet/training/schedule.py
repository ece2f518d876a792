"""The paper's learning-rate schedule as a closed form of the iteration number.

mmengine's ``LinearLR(start_factor=1e-6, begin=0, end=1000)`` followed by ``PolyLR(power=1,
eta_min=0, begin=1000, end=80000)``. Both spread their change over ``end - begin - 1`` steps, so
the warm-up reaches the full rate at iteration 999 and the decay reaches ``eta_min`` at 79999.
A closed form keeps the scheduler stateless: resuming needs only the step.
"""

from __future__ import annotations


def lr_factor(step: int, max_iters: int, warmup_iters: int, warmup_factor: float, power: float,
              min_factor: float = 0.0) -> float:
    """Multiplier of the base learning rate at 0-based iteration ``step``."""
    if step < warmup_iters:
        span = max(warmup_iters - 1, 1)
        return warmup_factor + (1.0 - warmup_factor) * min(step, span) / span
    span = max(max_iters - warmup_iters - 1, 1)
    progress = min(step - warmup_iters, span) / span
    return (1.0 - min_factor) * (1.0 - progress) ** power + min_factor
