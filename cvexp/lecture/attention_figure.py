"""Heatmaps of the worked self-attention example: P, the scores, the masked scores, the weights."""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes

from cvexp.lecture.worked_attention import WorkedAttention

MAX_HEADS_DRAWN = 4
MAX_ANNOTATED = 16  # write the numbers into the cells up to this many rows and columns


def heatmap(
    ax: Axes,
    matrix: torch.Tensor,
    *,
    rows: Sequence[str],
    cols: Sequence[str],
    title: str,
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
    xlabel: str = "",
    ylabel: str = "",
    aspect: str = "equal",
) -> None:
    """One labelled heatmap of a (R, C) matrix with its colour bar; -inf cells grey, marked -inf."""
    values = matrix.detach().double().cpu().numpy()
    colours = plt.get_cmap(cmap).with_extremes(bad="#d9d9d9")
    image = ax.imshow(
        np.ma.masked_invalid(values), cmap=colours, vmin=vmin, vmax=vmax, aspect=aspect
    )
    bar = ax.figure.colorbar(image, ax=ax, fraction=0.05, pad=0.02, shrink=0.9)
    bar.ax.tick_params(labelsize=8)
    rotate = max(len(c) for c in cols) > 2
    ax.set_xticks(
        range(len(cols)),
        cols,
        fontsize=9,
        rotation=40 if rotate else 0,
        ha="right" if rotate else "center",
    )
    ax.set_yticks(range(len(rows)), rows, fontsize=9)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    if values.shape[0] > MAX_ANNOTATED or values.shape[1] > MAX_ANNOTATED:
        return
    for (r, c), value in np.ndenumerate(values):
        if not np.isfinite(value):
            ax.text(c, r, "-inf", ha="center", va="center", fontsize=8, color="#555555")
            continue
        red, green, blue, _ = image.cmap(image.norm(value))
        dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5
        text = f"{value:.2f}"
        ax.text(
            c,
            r,
            "0.00" if text == "-0.00" else text,
            ha="center",
            va="center",
            fontsize=8,
            color="white" if dark else "black",
        )


def worked_attention_figure(steps: WorkedAttention) -> plt.Figure:
    """P, the scaled scores, the masked scores and the softmax weights, labelled with the words."""
    words, t, d = steps.words, len(steps.words), steps.dim
    shown_heads = steps.heads[:MAX_HEADS_DRAWN]
    cell = min(0.62, 6.0 / t)  # inches per word in the T x T maps
    panel = cell * t + 2.0  # one T x T map, its labels and colour bar
    fig = plt.figure(
        figsize=(3 * panel + 0.6, (1 + len(shown_heads)) * panel + 0.5),
        dpi=100,
        layout="constrained",
    )
    grid = fig.add_gridspec(1 + len(shown_heads), 3)
    heatmap(
        fig.add_subplot(grid[0, :2]),
        steps.pos,
        rows=[f"{i} {w}" for i, w in enumerate(words)],
        cols=[str(j) for j in range(d)],
        title=f"P: positional encoding ({t} x {d}), added to the word vectors",
        cmap="RdBu_r",
        vmin=-1,
        vmax=1,
        xlabel="dimension j (even: sin, odd: cos)",
        ylabel="position, word",
        aspect="auto",
    )
    notes = fig.add_subplot(grid[0, 2])
    notes.axis("off")
    notes.text(
        0.0,
        0.5,
        "X = one-hot x E,  X + P\n"
        "Q = (X+P) W_Q,  K = (X+P) W_K,  V = (X+P) W_V\n"
        f"scores = Q Kᵀ / √d_k   (√{steps.dk} = {math.sqrt(steps.dk):.2f})\n"
        + (
            "masked: -inf above the diagonal\n"
            if steps.mask_kind == "causal"
            else "mask=none: nothing masked\n"
        )
        + "weights = softmax of each row\n"
        "output = weights x V" + ("\nheads: concat x W_out" if steps.num_heads > 1 else ""),
        fontsize=10,
        va="center",
        linespacing=1.6,
    )
    masked_title = (
        "masked: -inf above the diagonal" if steps.mask_kind == "causal" else "mask=none: unchanged"
    )
    xlabel, ylabel = "key (word attended to)", "query (word attending)"
    for row, head in enumerate(shown_heads, start=1):
        label = f"head {row}: " if steps.num_heads > 1 else ""
        low, high = float(head.scaled.min()), float(head.scaled.max())
        for col, (matrix, title) in enumerate(
            [(head.scaled, f"{label}scores QKᵀ/√d_k"), (head.masked, f"{label}{masked_title}")]
        ):
            heatmap(
                fig.add_subplot(grid[row, col]),
                matrix,
                rows=words,
                cols=words,
                title=title,
                vmin=low,
                vmax=high,
                xlabel=xlabel,
                ylabel=ylabel if col == 0 else "",
            )
        heatmap(
            fig.add_subplot(grid[row, 2]),
            head.weights,
            rows=words,
            cols=words,
            title=f"{label}softmax weights (rows sum to 1)",
            cmap="magma",
            vmin=0,
            vmax=1,
            xlabel=xlabel,
        )
    more = (
        f" (heads 1-{MAX_HEADS_DRAWN} of {steps.num_heads} drawn)"
        if steps.num_heads > MAX_HEADS_DRAWN
        else ""
    )
    fig.suptitle(
        f'Self-attention on "{steps.sentence}"\nd={d}, d_k={steps.dk}, d_v={steps.dv}, '
        f"heads={steps.num_heads}, mask={steps.mask_kind}, seed={steps.seed}{more}",
        fontsize=12,
    )
    return fig
