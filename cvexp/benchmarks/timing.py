"""Timing helpers shared by the benchmarks: synchronised wall clock, medians over interleaved repeats."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

# A measurement: does its work once and returns (items processed, seconds of its timed window).
Measurement = Callable[[], tuple[int, float]]


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that wall-clock time covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run: Callable[[], int], device: torch.device) -> Measurement:
    """A measurement of the whole call of `run`, which returns how many items it processed."""

    def measure() -> tuple[int, float]:
        synchronize(device)
        start = time.perf_counter()
        items = run()
        synchronize(device)
        return items, time.perf_counter() - start

    return measure


def train_steps(
    net: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    steps: int,
    optimizer: torch.optim.Optimizer,
) -> Callable[[], int]:
    """A runner of `steps` optimiser steps (cross-entropy) that returns the images it processed."""
    net.train()

    def run() -> int:
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(net(images), labels).backward()
            optimizer.step()
        return steps * len(images)

    return run


def interleaved_medians(
    candidates: dict[str, Measurement], *, repeats: int
) -> dict[str, dict[str, float | list[float]]]:
    """Run each candidate once per repeat, in turn (A, B, A, B, ...), so drift hits all alike.

    The result per candidate is its items per second, per repeat and as the median.
    """
    rates: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, measure in candidates.items():
            items, seconds = measure()
            rates[name].append(items / seconds)
    return {
        name: {"median": statistics.median(r), "repeats": [round(x, 2) for x in r]}
        for name, r in rates.items()
    }
