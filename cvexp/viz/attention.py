"""Attention maps: a ViT's class-token attention per head and its rollout, overlaid on the image;
and local self-attention's window weights."""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F


def attention_rollout(attentions: Sequence[torch.Tensor]) -> torch.Tensor:
    """Attention rollout (Abnar and Zuidema 2020) through all blocks.

    Each block's weights (B, h, T, T) are averaged over heads, the residual connection is
    added as 0.5 A + 0.5 I, rows are renormalised, and the blocks are multiplied from the
    first to the last: R = A_L ... A_2 A_1. Returns (B, T, T); row 0 is the class token's.
    """
    rollout = None
    for weights in attentions:
        a = weights.mean(dim=1)  # (B, T, T)
        a = 0.5 * a + 0.5 * torch.eye(a.shape[-1], device=a.device, dtype=a.dtype)
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout
    return rollout


def cls_to_patches(row: torch.Tensor, image_size: int) -> torch.Tensor:
    """A class-token row over T = 1 + N tokens -> an (image_size, image_size) map over the patches."""
    patches = row[..., 1:]  # (..., N)
    grid = math.isqrt(patches.shape[-1])
    maps = patches.reshape(-1, 1, grid, grid)
    return F.interpolate(maps, size=(image_size, image_size), mode="bilinear", align_corners=False)[
        :, 0
    ]


def attention_figure(
    image: torch.Tensor, attentions: Sequence[torch.Tensor], *, blocks: Sequence[int], title: str
) -> plt.Figure:
    """One row per chosen block: the class token's attention of each head; a last row: the rollout.

    image: (3, H, W) in [0, 1]; attentions: per block, (1, h, T, T) for this image.
    """
    heads = attentions[0].shape[1]
    size = image.shape[-1]
    picture = image.permute(1, 2, 0).clamp(0, 1).cpu().numpy()
    cols = heads + 1
    fig, axes = plt.subplots(
        len(blocks) + 1,
        cols,
        figsize=(cols * 1.7, (len(blocks) + 1) * 1.8 + 0.6),
        dpi=110,
        squeeze=False,
    )
    for ax in axes.flat:
        ax.axis("off")
    for row, block in enumerate(blocks):
        maps = cls_to_patches(attentions[block][0, :, 0], size)  # (h, H, W)
        axes[row][0].imshow(picture)
        axes[row][0].set_title(f"input; block {block}'s heads →", fontsize=7)
        for head in range(heads):
            axes[row][head + 1].imshow(picture)
            axes[row][head + 1].imshow(maps[head].cpu().numpy(), cmap="jet", alpha=0.5)
            axes[row][head + 1].set_title(f"head {head}", fontsize=7)
    rollout = cls_to_patches(attention_rollout(attentions)[0, 0], size)[0]
    axes[-1][0].imshow(picture)
    axes[-1][0].set_title("input", fontsize=8)
    axes[-1][1].imshow(picture)
    axes[-1][1].imshow(rollout.cpu().numpy(), cmap="jet", alpha=0.5)
    axes[-1][1].set_title("rollout, all blocks", fontsize=7)
    fig.suptitle(
        f"{title}\nclass-token attention over the patches, per head; last row: attention rollout",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def local_attention_figure(
    image: torch.Tensor, weights: torch.Tensor, *, layer: int, title: str
) -> plt.Figure:
    """Local self-attention of one layer: the centre pixel's weights over its k x k window, per head.

    image: (3, H, W) in [0, 1]; weights: (1, heads, k*k, h, w) for this image.
    """
    _, heads, window, height, width = weights.shape
    k = math.isqrt(window)
    centre = weights[0, :, :, height // 2, width // 2].reshape(heads, k, k)  # (heads, k, k)
    fig, axes = plt.subplots(1, heads + 1, figsize=((heads + 1) * 1.6, 2.3), dpi=110, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes[0][0].imshow(image.permute(1, 2, 0).clamp(0, 1).cpu().numpy(), interpolation="nearest")
    axes[0][0].set_title("input", fontsize=8)
    for head in range(heads):
        axes[0][head + 1].imshow(centre[head].cpu().numpy(), cmap="viridis", vmin=0)
        axes[0][head + 1].set_title(f"head {head}", fontsize=7)
    fig.suptitle(
        f"{title}\nlayer {layer} ({height}x{width}): the centre pixel's attention over its "
        f"{k}x{k} window, per head",
        fontsize=8,
    )
    fig.tight_layout()
    return fig
