"""Learning-rate schedules built from the optimiser and the fit's total number of steps."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class WarmupCosineFactor:
    """The lr multiplier at a step: linear warmup from 0, then cosine decay to `min_factor`.

    A class rather than a closure: LambdaLR saves its plain attributes in checkpoints,
    which then load with weights_only=True and resume on the same curve.
    """

    def __init__(self, total_steps: int, warmup_steps: int, min_factor: float) -> None:
        self.total_steps, self.warmup_steps, self.min_factor = total_steps, warmup_steps, min_factor

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(
            1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        )
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_cosine(
    optimizer: Optimizer,
    *,
    total_steps: int,
    warmup_fraction: float = 0.05,
    min_factor: float = 0.01,
) -> LambdaLR:
    """Linear warmup over `warmup_fraction` of the steps, then cosine decay to `min_factor` x lr."""
    if not 0.0 <= warmup_fraction < 1.0:
        raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}.")
    warmup = max(1, round(warmup_fraction * total_steps))
    return LambdaLR(optimizer, WarmupCosineFactor(total_steps, warmup, min_factor))
