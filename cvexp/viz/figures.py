"""Saving figures, and the labelled grid of predictions."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import torch


def save_figure(fig: plt.Figure, path: str | Path) -> Path:
    """Write a figure as PNG (creating its folder) and close it, written or not."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def image_grid(count: int, *, max_cols: int, cell: tuple[float, float], extra_height: float = 0.6):
    """A figure with a grid of at least `count` axes, all without ticks; returns (fig, flat axes)."""
    cols = max(1, min(count, max_cols))
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(cols * cell[0], rows * cell[1] + extra_height), dpi=110, squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
    return fig, list(axes.flat)


def predictions_figure(
    images: torch.Tensor,
    probabilities: torch.Tensor,
    labels: torch.Tensor,
    class_names: Sequence[str],
    *,
    title: str,
) -> plt.Figure:
    """A grid of images (B, 3, H, W) in [0, 1], each titled with its prediction and true class (red if wrong)."""
    fig, axes = image_grid(len(images), max_cols=8, cell=(1.5, 1.7), extra_height=0.5)
    confidence, predicted = probabilities.max(dim=1)
    for ax, image, p, c, y in zip(
        axes, images, predicted.tolist(), confidence.tolist(), labels.tolist(), strict=False
    ):
        ax.imshow(image.permute(1, 2, 0).clamp(0, 1).cpu().numpy(), interpolation="nearest")
        colour = "green" if p == y else "red"
        ax.set_title(f"{class_names[p]} {c:.0%}\ntrue: {class_names[y]}", fontsize=7, color=colour)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
