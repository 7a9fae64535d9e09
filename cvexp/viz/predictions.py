"""A labelled grid of predictions for images without known labels (cvexp-predict)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch

from cvexp.viz.figures import image_grid


def labelled_grid_figure(
    images: torch.Tensor,
    probabilities: torch.Tensor,
    names: Sequence[str],
    class_names: Sequence[str],
    *,
    title: str,
    max_name: int = 18,
) -> plt.Figure:
    """Images (B, 3, H, W) in [0, 1], each titled with its top-1 class and probability, and its name."""
    fig, axes = image_grid(len(images), max_cols=8, cell=(1.5, 1.8), extra_height=0.5)
    confidence, predicted = probabilities.max(dim=1)
    for ax, image, p, c, name in zip(
        axes, images, predicted.tolist(), confidence.tolist(), names, strict=False
    ):
        ax.imshow(image.permute(1, 2, 0).clamp(0, 1).cpu().numpy(), interpolation="nearest")
        short = name if len(name) <= max_name else f"…{name[-(max_name - 1) :]}"
        ax.set_title(f"{class_names[p]} {c:.0%}\n{short}", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
