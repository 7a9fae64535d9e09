"""Figures of positional encodings: the sinusoidal table, and how similar each position's vector is
to the others'.

The similarity grid follows figure 7 of the ViT paper (Dosovitskiy et al. 2021): for a
G x G patch grid, one small G x G map per patch, showing the cosine similarity of that
patch's position embedding with every patch's.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import torch

from cvexp.models.vit import sinusoidal_table


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
