"""Convergence graph: curves per configuration, mean and a ±1 std band over seeds, best epochs marked."""

from __future__ import annotations

import statistics
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

Curves = dict[str, list[tuple[int, float]]]
TITLES = {
    "train/loss_epoch": "train loss (epoch mean)",
    "val/loss": "validation loss",
    "val/acc": "validation accuracy",
}


def mean_std_by_epoch(
    series: list[list[tuple[int, float]]],
) -> tuple[list[int], list[float], list[float]]:
    """Per epoch: the mean and std over the series that reach it (std 0 where only one does)."""
    by_epoch: dict[int, list[float]] = {}
    for points in series:
        for epoch, value in points:
            by_epoch.setdefault(epoch, []).append(value)
    epochs = sorted(by_epoch)
    means = [statistics.fmean(by_epoch[e]) for e in epochs]
    stds = [statistics.stdev(by_epoch[e]) if len(by_epoch[e]) > 1 else 0.0 for e in epochs]
    return epochs, means, stds


def plot_convergence(
    configurations: dict[str, list[tuple[Curves, int | None]]],
    tags: list[str],
    path: str | Path,
    *,
    title: str = "",
) -> Path:
    """One panel per tag; one line per configuration (mean over its runs) with a ±1 std band.

    `configurations` maps a label to its runs, each (curves by tag, best epoch, 0-based).
    The best epochs (the checkpoints early stopping kept) are marked on every panel.
    """
    fig, axes = plt.subplots(1, len(tags), figsize=(5.2 * len(tags), 4.2), dpi=120, squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (label, runs) in enumerate(configurations.items()):
        colour = colours[index % len(colours)]
        n = len(runs)
        for ax, tag in zip(axes[0], tags, strict=True):
            epochs, means, stds = mean_std_by_epoch(
                [curves[tag] for curves, _ in runs if tag in curves]
            )
            if not epochs:
                continue
            ax.plot(
                epochs,
                means,
                color=colour,
                label=f"{label} (n={n})",
                linewidth=1.8,
                marker="o",
                markersize=3,
            )
            if n > 1:
                low = [m - s for m, s in zip(means, stds, strict=True)]
                high = [m + s for m, s in zip(means, stds, strict=True)]
                ax.fill_between(epochs, low, high, color=colour, alpha=0.2, linewidth=0)
            for curves, best_epoch in runs:  # the epoch each run's best checkpoint comes from
                points = dict(curves.get(tag, []))
                if best_epoch is not None and best_epoch + 1 in points:
                    ax.plot(
                        best_epoch + 1,
                        points[best_epoch + 1],
                        marker="*",
                        markersize=11,
                        color=colour,
                        markeredgecolor="black",
                        linestyle="none",
                    )
    for ax, tag in zip(axes[0], tags, strict=True):
        ax.set_title(TITLES.get(tag, tag))
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(tag)
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    star = plt.Line2D(
        [], [], marker="*", markersize=11, color="grey", markeredgecolor="black", linestyle="none"
    )
    fig.legend(
        [*handles, star],
        [*labels, "best checkpoint (the one tested)"],
        loc="lower center",
        ncol=min(4, len(labels) + 1),
        frameon=False,
    )
    fig.suptitle(title or "Convergence")
    fig.tight_layout(rect=(0, 0.1, 1, 0.95))
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
