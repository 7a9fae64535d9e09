"""Timing helpers shared by the benchmarks: synchronised wall clock, medians over interleaved repeats."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that wall-clock time covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_medians(
    candidates: dict[str, Callable[[], int]], *, repeats: int, device: torch.device
) -> dict[str, dict[str, float | list[float]]]:
    """Run each candidate once per repeat, in turn (A, B, A, B, ...), so drift hits all alike.

    Each candidate does its work and returns how many items it processed; the result per
    candidate is its items per second, per repeat and as the median.
    """
    rates: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, run in candidates.items():
            synchronize(device)
            start = time.perf_counter()
            items = run()
            synchronize(device)
            rates[name].append(items / (time.perf_counter() - start))
    return {
        name: {"median": statistics.median(r), "repeats": [round(x, 2) for x in r]}
        for name, r in rates.items()
    }
