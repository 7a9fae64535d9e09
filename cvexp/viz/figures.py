"""Saving figures, and the labelled grid of predictions."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import torch


def save_figure(fig: plt.Figure, path: str | Path) -> Path:
    """Write a figure as PNG (creating its folder) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def predictions_figure(
    images: torch.Tensor,
    probabilities: torch.Tensor,
    labels: torch.Tensor,
    class_names: Sequence[str],
    *,
    title: str,
) -> plt.Figure:
    """A grid of images (B, 3, H, W) in [0, 1], each titled with its prediction and true class (red if wrong)."""
    n = len(images)
    cols = min(n, 8)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(cols * 1.5, rows * 1.7 + 0.5), dpi=110, squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
    confidence, predicted = probabilities.max(dim=1)
    for ax, image, p, c, y in zip(
        axes.flat, images, predicted.tolist(), confidence.tolist(), labels.tolist(), strict=False
    ):
        ax.imshow(image.permute(1, 2, 0).clamp(0, 1).cpu().numpy(), interpolation="nearest")
        colour = "green" if p == y else "red"
        ax.set_title(f"{class_names[p]} {c:.0%}\ntrue: {class_names[y]}", fontsize=7, color=colour)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
