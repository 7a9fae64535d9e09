"""Convergence graph: curves per configuration, mean and a ±1 std band over seeds, best epochs
marked; against epochs, or against training seconds (the `time/train_seconds` each run logs)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from cvexp.run_record import TRAIN_SECONDS

Curves = dict[str, list[tuple[int, float]]]
# configuration label -> its runs, each (curves by tag, best epoch, 0-based, or None)
Configurations = dict[str, list[tuple[Curves, int | None]]]
X_AXES = ("epoch", "time")
TITLES = {
    "train/loss_epoch": "train loss (epoch mean)",
    "val/loss": "validation loss",
    "val/acc": "validation accuracy",
}
# (unit, seconds per unit) for a time axis, by the longest run: seconds up to 3 minutes,
# minutes up to 3 hours, hours beyond
TIME_UNITS = ((180.0, "s", 1.0), (3 * 3600.0, "min", 60.0), (float("inf"), "h", 3600.0))


def time_unit(seconds: float) -> tuple[str, float]:
    """The unit of a time axis that reaches `seconds`, and the seconds in one of it."""
    return next((unit, size) for limit, unit, size in TIME_UNITS if seconds <= limit)


@dataclass(frozen=True)
class Line:
    """One configuration's line on one panel: its label and number of runs, x (epochs, or
    training time in the axis's unit), the mean over its runs and their std, and each run's
    best checkpoint as (x, value)."""

    label: str
    n: int
    xs: list[float]
    means: list[float]
    stds: list[float]
    best: list[tuple[float, float]]


def convergence_lines(
    configurations: Configurations, tags: list[str], *, x: str = "epoch"
) -> tuple[dict[str, list[Line]], str]:
    """The lines of each panel (tag) and the x axis's label.

    `x="epoch"`: per epoch (1-based), the mean and std over the runs that reach it.
    `x="time"`: the same means, each at the mean over those runs of the training seconds that
    the runs logged at that epoch (`time/train_seconds`; the runs of one configuration take
    about the same time per epoch), in seconds, minutes or hours by the longest run. An epoch
    without a time (a run that did not log one) is left out.
    """
    if x not in X_AXES:
        raise ValueError(f"x must be one of {X_AXES}, not {x!r}")
    unit, size = "epoch", 1.0
    if x == "time":
        logged = [s for runs in configurations.values() for c, _ in runs for _, s in _seconds(c)]
        unit, size = time_unit(max(logged, default=0.0))

    def at(curves: Curves, epoch: int) -> float | None:
        """The x of a run's epoch: the epoch, or its training time in `unit` (None: not logged)."""
        if x == "epoch":
            return float(epoch)
        seconds = dict(_seconds(curves)).get(epoch)
        return None if seconds is None else seconds / size

    lines: dict[str, list[Line]] = {tag: [] for tag in tags}
    for label, runs in configurations.items():
        for tag in tags:
            by_epoch: dict[int, list[tuple[float, float]]] = {}  # epoch -> (x, value) per run
            best = []
            for curves, best_epoch in runs:
                points = dict(curves.get(tag, []))
                for epoch, value in points.items():
                    if (x_value := at(curves, epoch)) is not None:
                        by_epoch.setdefault(epoch, []).append((x_value, value))
                # the epoch each run's best checkpoint comes from
                if (
                    best_epoch is not None
                    and best_epoch + 1 in points
                    and (best_x := at(curves, best_epoch + 1)) is not None
                ):
                    best.append((best_x, points[best_epoch + 1]))
            if not by_epoch:
                continue
            epochs = sorted(by_epoch)
            values = [[v for _, v in by_epoch[e]] for e in epochs]
            lines[tag].append(
                Line(
                    label,
                    len(runs),
                    xs=[statistics.fmean(x_value for x_value, _ in by_epoch[e]) for e in epochs],
                    means=[statistics.fmean(vs) for vs in values],
                    stds=[statistics.stdev(vs) if len(vs) > 1 else 0.0 for vs in values],
                    best=best,
                )
            )
    return lines, "epoch" if x == "epoch" else f"training time ({unit})"


def _seconds(curves: Curves) -> list[tuple[int, float]]:
    return curves.get(TRAIN_SECONDS, [])


def plot_convergence(
    configurations: Configurations,
    tags: list[str],
    path: str | Path,
    *,
    title: str = "",
    x: str = "epoch",
) -> Path:
    """One panel per tag; one line per configuration (mean over its runs) with a ±1 std band.

    `configurations` maps a label to its runs, each (curves by tag, best epoch, 0-based).
    The best epochs (the checkpoints early stopping kept) are marked on every panel. `x`:
    "epoch", or "time" for training time (see `convergence_lines`).
    """
    lines, xlabel = convergence_lines(configurations, tags, x=x)
    fig, axes = plt.subplots(1, len(tags), figsize=(5.2 * len(tags), 4.2), dpi=120, squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colour_of = {label: colours[i % len(colours)] for i, label in enumerate(configurations)}
    for ax, tag in zip(axes[0], tags, strict=True):
        for line in lines[tag]:
            colour = colour_of[line.label]
            ax.plot(
                line.xs,
                line.means,
                color=colour,
                label=f"{line.label} (n={line.n})",
                linewidth=1.8,
                marker="o",
                markersize=3,
            )
            if line.n > 1:
                low = [m - s for m, s in zip(line.means, line.stds, strict=True)]
                high = [m + s for m, s in zip(line.means, line.stds, strict=True)]
                ax.fill_between(line.xs, low, high, color=colour, alpha=0.2, linewidth=0)
            for best_x, value in line.best:
                ax.plot(
                    best_x,
                    value,
                    marker="*",
                    markersize=11,
                    color=colour,
                    markeredgecolor="black",
                    linestyle="none",
                )
        ax.set_title(TITLES.get(tag, tag))
        ax.set_xlabel(xlabel)
        if x == "epoch":
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
