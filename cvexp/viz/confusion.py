"""Confusion-matrix figure."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from cvexp.viz.figures import save_figure


def plot_confusion_matrix(
    matrix: torch.Tensor, class_names: Sequence[str], path: str | Path, *, title: str = ""
) -> Path:
    """Save the confusion-matrix figure as a PNG."""
    return save_figure(confusion_matrix_figure(matrix, class_names, title=title), path)


def confusion_matrix_figure(
    matrix: torch.Tensor, class_names: Sequence[str], *, title: str = ""
) -> plt.Figure:
    """A row-normalised confusion matrix (rows: true class) with the count in each cell."""
    counts = matrix.to(torch.int64)
    rates = counts.double() / counts.sum(dim=1, keepdim=True).clamp(min=1)
    fig, ax = plt.subplots(figsize=(8, 7), dpi=120)
    image = ax.imshow(rates.numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title or "Confusion matrix (colour: fraction of the true class; text: count)")
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            ax.text(
                j,
                i,
                str(int(counts[i, j])),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if rates[i, j] > 0.5 else "black",
            )
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return fig
