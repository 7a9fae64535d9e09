"""Draw a network's filters and feature maps (the maps come from its `forward_intermediates`)."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import torch
from torch import nn

from cvexp.viz.figures import image_grid


def top_channels(maps: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k channels of (C, h, w) maps with the highest mean activation."""
    return maps.mean(dim=(1, 2)).topk(min(k, maps.shape[0])).indices


def _to_unit(t: torch.Tensor) -> torch.Tensor:
    """Scale a tensor to [0, 1] (a constant tensor becomes 0)."""
    t = t.float()
    low, high = t.min(), t.max()
    return (t - low) / (high - low) if high > low else torch.zeros_like(t)


def normalised_rgb_filters(conv: nn.Conv2d) -> torch.Tensor:
    """A first-layer conv's filters as (N, k, k, 3) RGB images, each scaled to [0, 1] on its own."""
    weights = conv.weight.detach().cpu()  # (N, 3, k, k)
    return torch.stack([_to_unit(w).permute(1, 2, 0) for w in weights])


def filters_figure(conv: nn.Conv2d, *, title: str, max_filters: int = 64) -> plt.Figure:
    """A grid of a conv layer's filters.

    RGB filters (a first layer) are shown in colour, each normalised to [0, 1]. Deeper
    filters have many input channels, so each is shown as its mean over input channels,
    for the `max_filters` filters of largest norm; the title says which view it is.
    """
    weights = conv.weight.detach().cpu()  # (N, C_in, k, k)
    if weights.shape[1] == 3:
        images, cmap = normalised_rgb_filters(conv)[:max_filters], None
        subtitle = f"{min(len(weights), max_filters)} RGB filters, each scaled to [0, 1]"
        order = torch.arange(len(images))
    else:
        order = weights.flatten(1).norm(dim=1).argsort(descending=True)[:max_filters]
        images = torch.stack([_to_unit(weights[i].mean(0)) for i in order])
        cmap = "gray"
        subtitle = f"mean over {weights.shape[1]} input channels, {len(order)} of {len(weights)} filters by largest norm"
    fig, axes = image_grid(
        len(images), max_cols=math.ceil(math.sqrt(len(images))), cell=(0.9, 0.9), extra_height=0.8
    )
    for ax, img, index in zip(axes, images, order.tolist(), strict=False):
        ax.imshow(img.numpy(), cmap=cmap, interpolation="nearest")
        ax.set_title(str(index), fontsize=6)
    fig.suptitle(f"{title}\n{subtitle}", fontsize=9)
    fig.tight_layout()
    return fig


def feature_grid_figure(maps: torch.Tensor, *, title: str, k: int = 16) -> plt.Figure:
    """The k channels with the highest mean activation of (C, h, w) maps, each with its own scale."""
    channels = top_channels(maps, k)
    fig, axes = image_grid(
        len(channels),
        max_cols=math.ceil(math.sqrt(len(channels))),
        cell=(1.3, 1.3),
        extra_height=0.8,
    )
    for ax, channel in zip(axes, channels.tolist(), strict=False):
        ax.imshow(maps[channel].cpu().numpy(), cmap="viridis", interpolation="nearest")
        ax.set_title(f"ch {channel}", fontsize=7)
    fig.suptitle(
        f"{title}\ntop {len(channels)} of {maps.shape[0]} channels by mean activation", fontsize=9
    )
    fig.tight_layout()
    return fig


def overview_figure(
    image: torch.Tensor, maps: dict[str, torch.Tensor], *, title: str
) -> plt.Figure:
    """The input, then for each recorded layer its most active channel: edges to parts, in one row."""
    fig, axes = image_grid(len(maps) + 1, max_cols=7, cell=(2.0, 2.2))
    axes[0].imshow(image.permute(1, 2, 0).clamp(0, 1).cpu().numpy(), interpolation="nearest")
    axes[0].set_title(f"input {tuple(image.shape)}", fontsize=8)
    for ax, (name, layer_maps) in zip(axes[1:], maps.items(), strict=False):
        channel = int(top_channels(layer_maps, 1)[0])
        ax.imshow(layer_maps[channel].cpu().numpy(), cmap="viridis", interpolation="nearest")
        ax.set_title(f"{name} {tuple(layer_maps.shape)}\nch {channel}", fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
