"""Positional encodings: the sinusoidal table, and how similar each position's vector is to the others'.

The similarity grid follows figure 7 of the ViT paper (Dosovitskiy et al. 2021): for a
G x G patch grid, one small G x G map per patch, showing the cosine similarity of that
patch's position embedding with every patch's.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from cvexp.models.vit import VisionTransformer, sinusoidal_table


def sinusoidal_encoding_figure(num_positions: int = 64, dim: int = 128) -> plt.Figure:
    """The table p(i, j) as a heatmap (positions x dimensions), and a few of its columns as curves."""
    table = sinusoidal_table(num_positions, dim)  # (N, D)
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(11, 4.6), dpi=100, gridspec_kw={"width_ratios": [1.25, 1]}
    )
    image = left.imshow(table.numpy(), cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
    fig.colorbar(image, ax=left, fraction=0.046, pad=0.03, label="p(i, j)")
    left.set_xlabel("dimension j (even: sin, odd: cos)")
    left.set_ylabel("position i")
    left.set_title(f"Sinusoidal positional encoding, {num_positions} positions x {dim} dimensions")
    positions = np.arange(num_positions)
    for j in sorted({0, 1, 2 * (dim // 16), 2 * (dim // 8), 2 * (dim // 4)} - {dim}):
        if j < dim:
            wave = "sin" if j % 2 == 0 else "cos"
            right.plot(positions, table[:, j].numpy(), label=f"j = {j} ({wave})", linewidth=1.2)
    right.set_xlabel("position i")
    right.set_ylabel("p(i, j)")
    right.set_title("Columns of the table: lower j, faster waves")
    right.legend(fontsize=8, loc="lower left")
    right.grid(alpha=0.3)
    fig.suptitle(
        "p(i, 2k) = sin(i / 10000^(2k/D)),  p(i, 2k+1) = cos(i / 10000^(2k/D))", fontsize=11
    )
    fig.tight_layout()
    return fig


def cosine_similarity_matrix(table: torch.Tensor) -> torch.Tensor:
    """(N, D) position vectors -> (N, N) cosine similarity of every pair."""
    unit = torch.nn.functional.normalize(table.double(), dim=-1)  # (N, D)
    return (unit @ unit.T).float()  # (N, N)


def position_similarity_figure(table: torch.Tensor, grid: int, *, title: str) -> plt.Figure:
    """ViT figure 7: for each of the G x G patches, a G x G map of its cosine similarity with all.

    table: (G*G, D), the patches' position vectors in row-major order (no class token).
    """
    if table.shape[0] != grid * grid:
        raise ValueError(f"table has {table.shape[0]} positions, not grid^2 = {grid * grid}")
    sim = cosine_similarity_matrix(table).reshape(grid, grid, grid, grid).numpy()  # (r, c, r', c')
    step = grid + 1  # each small map plus a one-cell gap
    mosaic = np.full((grid * step - 1, grid * step - 1), np.nan)
    for r in range(grid):
        for c in range(grid):
            mosaic[r * step : r * step + grid, c * step : c * step + grid] = sim[r, c]
    side = min(9.0, 2.5 + 0.75 * grid)
    fig, ax = plt.subplots(figsize=(side + 1.2, side + 0.6), dpi=100)
    colours = plt.get_cmap("viridis").with_extremes(bad="white")
    low = max(-1.0, math.floor(float(sim.min()) * 10) / 10)  # the scale spans the values there are
    image = ax.imshow(np.ma.masked_invalid(mosaic), cmap=colours, vmin=low, vmax=1)
    centres = [r * step + (grid - 1) / 2 for r in range(grid)]
    labels = [str(i + 1) for i in range(grid)]
    every = max(1, math.ceil(grid / 16))  # at most 16 labels along an axis
    ax.set_xticks(centres[::every], labels[::every])
    ax.set_yticks(centres[::every], labels[::every])
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_xlabel("input patch column")
    ax.set_ylabel("input patch row")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03, label="cosine similarity")
    ax.set_title(
        f"{title}\neach small map: one patch's position embedding vs all {grid}x{grid} patches",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def sinusoidal_patch_table(grid: int, dim: int) -> torch.Tensor:
    """The scratch ViT's sinusoidal table for a G x G patch grid, patches only: (G*G, D).

    Row 0 of the ViT's table is the class token, so the patches are rows 1..G*G.
    """
    return sinusoidal_table(1 + grid * grid, dim)[1:]


def patch_position_embeddings(net: nn.Module) -> tuple[torch.Tensor, int] | None:
    """A ViT's position embeddings of its patches, (G*G, D), and the grid side G; None if it has none.

    Reads cvexp's scratch VisionTransformer (class token at position 0) and a timm ViT inside
    cvexp's TimmClassifier (prefix tokens skipped). Raises TypeError for a network without them.
    """
    if isinstance(net, VisionTransformer):
        if net.pos_embed is None:
            return None
        return net.pos_embed.detach()[0, 1:].float().cpu(), net.patch_embed.grid  # (N, D)
    model = getattr(net, "model", None)
    pos_embed = getattr(model, "pos_embed", None)
    grid_size = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if isinstance(pos_embed, torch.Tensor) and grid_size is not None:
        if grid_size[0] != grid_size[1]:
            raise TypeError(f"the patch grid {tuple(grid_size)} is not square")
        table = pos_embed.detach()[0].float().cpu()  # (prefix + N, D) or (N, D)
        if not getattr(model, "no_embed_class", False):
            table = table[getattr(model, "num_prefix_tokens", 1) :]
        return table, int(grid_size[0])
    if hasattr(model, "pos_embed"):  # a timm ViT built without position embeddings
        return None
    raise TypeError(f"{type(net).__name__} is not a Vision Transformer")
