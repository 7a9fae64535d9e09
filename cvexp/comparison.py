"""Compare runs: a results table (results.md, results.csv) and a convergence graph
(convergence.png against epochs, convergence_time.png against training time) from the runs and
sweeps given, written where no earlier result is replaced.

    from cvexp.comparison import compare
    result = compare([Path("multirun/2026-11-26/12-00-00")], metric="val/loss", x="both")

The runs are found, read and grouped by `cvexp.comparison_runs`. This file reads in order: the
table's rows, the Markdown and CSV, where the results go, and `compare`. The console command
is `cvexp-compare` (cvexp/cli/compare.py).
"""

from __future__ import annotations

import csv
import statistics
import time
from pathlib import Path
from typing import Any

from cvexp.comparison_runs import (
    Group,
    Run,
    find_run_dirs,
    group_runs,
    logged_tags,
    network_cost,
    ranking_metric,
    read_run,
    run_best,
)
from cvexp.errors import UserError
from cvexp.run_record import TRAIN_SECONDS, RunDir
from cvexp.runtime.run_dir import claim_fresh_dir
from cvexp.viz.curves import plot_convergence
from cvexp.viz.tables import markdown_table

CURVES = ("train/loss_epoch", "val/loss", "val/acc")  # the graph's panels, plus --metric
# the graph against each x axis (`cvexp.viz.curves.X_AXES`); --x both draws the two
FIGURES = {"epoch": "convergence.png", "time": "convergence_time.png"}
X_CHOICES = (*FIGURES, "both")
RATE = "train_images_per_s"  # summary.json: training images per second of training steps
RESULT_FILES = ("results.md", "results.csv", *FIGURES.values())


# ------------------------------------------------------------------ the table's rows


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _best(points: list[tuple[int, float]], metric: str) -> float:
    """The best value of a curve: the minimum of a loss, else the maximum."""
    values = [v for _, v in points]
    return min(values) if "loss" in metric else max(values)


def rank_rows(rows: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    """The rows best first by `ranked_value_mean` (configurations without one last), numbered."""
    ordered = sorted(
        rows,
        key=lambda row: (
            row["ranked_value_mean"] is None,
            -(row["ranked_value_mean"] or 0.0)
            if mode == "max"
            else row["ranked_value_mean"] or 0.0,
        ),
    )
    return [{"rank": i + 1, **row} for i, row in enumerate(ordered)]


def results_rows(
    groups: list[Group], metric: str, ranking: tuple[str, str] = ("val/acc", "max")
) -> list[dict[str, Any]]:
    """One row per configuration: cost, accuracy (mean, std over seeds), epochs, early stopping,
    time, and the mean best of the `ranking` metric (name, mode) that the table is ranked by.

    `test_acc_tta_mean` and `_std` (the test with test-time augmentation, tta=flip) come after
    the test accuracy when any run has one, in every row; otherwise the rows are without them.
    """
    with_tta = any(
        r.summary.get("test_acc_tta") is not None for group in groups for r in group.finished()
    )
    rows = []
    for group in groups:
        done = group.finished()
        recorded = [r for r in group.runs if r.record.config_path.is_file()]
        cost = network_cost((recorded or group.runs)[0].record)
        statuses: dict[str, int] = {}
        for run in group.runs:
            statuses[run.status] = statuses.get(run.status, 0) + 1
        best_val = _mean_std(
            [r.summary["best_val_acc"] for r in done if r.summary.get("best_val_acc") is not None]
        )
        test = _mean_std(
            [r.summary["test_acc"] for r in done if r.summary.get("test_acc") is not None]
        )
        test_tta = _mean_std(
            [r.summary["test_acc_tta"] for r in done if r.summary.get("test_acc_tta") is not None]
        )
        best_metric = _mean_std(
            [_best(r.curves[metric], metric) for r in done if r.curves.get(metric)]
        )
        ranked = _mean_std([v for r in done if (v := run_best(r, *ranking)) is not None])
        rows.append(
            {
                "configuration": group.label,
                "n": len(done),
                "status": ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())),
                "params_M": None if cost.params is None else cost.params / 1e6,
                "MMACs_per_image": None if cost.macs is None else cost.macs / 1e6,
                "GFLOPs_per_image": None if cost.macs is None else 2 * cost.macs / 1e9,
                "cost_note": cost.note,
                "best_val_acc_mean": best_val[0],
                "best_val_acc_std": best_val[1],
                "test_acc_mean": test[0],
                "test_acc_std": test[1],
                **(
                    {"test_acc_tta_mean": test_tta[0], "test_acc_tta_std": test_tta[1]}
                    if with_tta
                    else {}
                ),
                f"best_{metric}_mean": best_metric[0],
                "epochs_run_mean": _mean_std([r.summary.get("epochs_run", 0) for r in done])[0],
                "early_stopped": f"{sum(r.status == 'stopped_early' for r in done)}/{len(done)}",
                "train_seconds_mean": _mean_std(
                    [r.summary.get("train_seconds", 0.0) for r in done]
                )[0],
                "train_images_per_s_mean": _mean_std(
                    [r.summary[RATE] for r in done if r.summary.get(RATE) is not None]
                )[0],
                "ranked_by": f"{ranking[0]} ({ranking[1]})",
                "ranked_value_mean": ranked[0],
                "runs": " ".join(str(r.path) for r in group.runs),
            }
        )
    return rows


def _fmt(value: Any, digits: int = 4, missing: str = "-") -> str:
    if value is None:
        return missing
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _mean_pm_std(row: dict[str, Any], key: str) -> str:
    mean, std = row[f"{key}_mean"], row[f"{key}_std"]
    return "-" if mean is None else f"{mean:.4f} ± {std:.4f}"


def results_markdown(rows: list[dict[str, Any]], metric: str) -> str:
    """The table as Markdown (accuracies as mean ± std over seeds), with a note on the cost;
    a "test acc (tta)" column when the rows have one (`results_rows`)."""
    with_tta = any("test_acc_tta_mean" in row for row in rows)
    header = [
        "rank",
        "configuration",
        "n",
        "status",
        "params (M)",
        "MACs/image (M)",
        "GFLOPs/image",
        "best val acc",
        "test acc",
        *(["test acc (tta)"] if with_tta else []),
        f"best {metric}",
        "epochs",
        "early stop",
        "train time (s)",
        "train img/s",
    ]
    cells = []
    for row in rows:
        why = f"n/a ({row['cost_note']})" if row["cost_note"] else "-"
        cells.append(
            [
                str(row.get("rank", "-")),
                row["configuration"],
                str(row["n"]),
                row["status"],
                _fmt(row["params_M"], 3, "n/a" if row["cost_note"] else "-"),
                _fmt(row["MMACs_per_image"], 1, why),
                _fmt(row["GFLOPs_per_image"], 3, "n/a" if row["cost_note"] else "-"),
                _mean_pm_std(row, "best_val_acc"),
                _mean_pm_std(row, "test_acc"),
                *([_mean_pm_std(row, "test_acc_tta")] if with_tta else []),
                _fmt(row[f"best_{metric}_mean"]),
                _fmt(row["epochs_run_mean"], 1),
                row["early_stopped"],
                _fmt(row["train_seconds_mean"], 1),
                _fmt(row["train_images_per_s_mean"], 0),
            ]
        )
    note = (
        "MACs: multiply-accumulates for one 32x32 image (torch.utils.flop_counter, plus the "
        "documented count of local self-attention's q.k and weighted sum of v); FLOPs = 2 x MACs."
    )
    note += (
        "\ntrain time: seconds of fit, validation included; train img/s: training images per "
        "second of training steps, validation not counted (- for runs that did not record it)."
    )
    if with_tta:
        note += (
            "\ntest acc (tta): the same test with test-time augmentation (tta=flip: the mean "
            "logits of each image and its horizontal flip), over the runs that had it; test acc "
            "is the plain test."
        )
    ranked = (
        f"Ranked by the best {rows[0]['ranked_by']} (mean over seeds), the metric the runs "
        "optimised (optimized_metric)."
        if rows
        else ""
    )
    return f"{markdown_table(header, cells)}\n\n{ranked}\n{note}\n"


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """The rows as CSV: raw numbers, the cost note and the run directories of each configuration."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


# ------------------------------------------------------------------ where the results go


def earlier_results(folder: Path) -> list[str]:
    """The result files of an earlier comparison that `folder` holds."""
    return [name for name in RESULT_FILES if (folder / name).exists()]


def check_out_dir(out_dir: Path) -> None:
    """Refuse an --out folder that holds earlier results or lies inside a run directory."""
    earlier = earlier_results(out_dir)
    if earlier:
        fresh = next(
            f"{out_dir}-{n}"
            for n in range(1, 10_000)
            if not earlier_results(Path(f"{out_dir}-{n}"))
        )
        raise UserError(
            f"{out_dir} already holds an earlier comparison ({', '.join(earlier)}); pass a fresh "
            f"folder, e.g. --out {fresh}, so that it is not replaced."
        )
    where = out_dir.resolve()
    run = next((p for p in (where, *where.parents) if RunDir(p).is_run()), None)
    if run is not None:
        raise UserError(
            f"{out_dir} is inside the run directory {run}, and compare never writes into a run; "
            "pass an --out folder outside it, e.g. --out comparisons/<name>."
        )


def claim_out_dir(paths: list[Path], out_dir: Path | None) -> tuple[Path, str]:
    """The folder to write into, created, and a note when it is not the obvious one.

    --out DIR as given (checked by `check_out_dir`); else a single sweep directory itself, or a
    fresh `comparison-N` inside it when it already holds a comparison; else a fresh
    `comparisons/<date>_<time>`. Run directories are never written into.
    """
    if out_dir is not None:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(
                f"Cannot create {out_dir} ({err.strerror}); pass a writable --out folder."
            ) from None
        return out_dir, ""
    if len(paths) == 1 and not RunDir(paths[0]).is_run():
        sweep = paths[0]
        if not earlier_results(sweep):
            return sweep, ""
        for n in range(1, 10_000):
            try:
                (sweep / f"comparison-{n}").mkdir()
            except FileExistsError:
                continue
            except OSError as err:
                raise UserError(
                    f"Cannot create a folder in {sweep} ({err.strerror}); pass --out <a writable folder>."
                ) from None
            folder = sweep / f"comparison-{n}"
            return folder, f"{sweep} already holds a comparison, so this one went to {folder}"
    return claim_fresh_dir(f"comparisons/{time.strftime('%Y-%m-%d_%H-%M-%S')}"), ""


# ------------------------------------------------------------------ the comparison


def check_times_logged(drawn: list[Run], option: str = "time") -> None:
    """Refuse --x time (or both, `option`) for runs that logged scalars but no training time (made before
    RunSummary logged `time/train_seconds`): their curves have no place on a time axis."""
    without = [str(r.path) for r in drawn if r.curves and TRAIN_SECONDS not in r.curves]
    if without:
        listed = ", ".join(without[:5]) + (
            f" and {len(without) - 5} more" if len(without) > 5 else ""
        )
        raise UserError(
            f"--x {option} needs the training time ({TRAIN_SECONDS}) that runs log at each "
            f"validation, and {len(without)} of these runs, trained before it was logged, have "
            f"none ({listed}); compare them with --x epoch, or leave them out."
        )


def compare(
    paths: list[Path],
    *,
    out_dir: Path | None = None,
    metric: str = "val/acc",
    x: str = "epoch",
) -> dict[str, Any]:
    """Read the runs under `paths`; write results.md, results.csv and the convergence graph:
    against epochs (`x="epoch"`, convergence.png), training time (`x="time"`,
    convergence_time.png, from each run's `time/train_seconds`) or both (`x="both"`).

    Returns `out_dir` (where they went), `rows` (the table's rows, best first), `table` (the
    Markdown), `runs` (each run once), `duplicates` (the runs reached twice and left out: a run
    given twice, or a sweep and one of its jobs), `figures` (the graphs' file names) and `note`
    (a sentence, or "").
    """
    if x not in X_CHOICES:
        raise UserError(f"--x {x} is not an x axis; pass one of: {', '.join(X_CHOICES)}.")
    axes = list(FIGURES) if x == "both" else [x]
    paths = [Path(p) for p in paths]
    if out_dir is not None:
        check_out_dir(Path(out_dir))
    run_dirs, duplicates = find_run_dirs(paths)
    runs = [read_run(p) for p in run_dirs]
    tags = logged_tags(runs)
    if tags and metric not in tags:
        raise UserError(
            f"--metric {metric} is not logged by any of these runs; pass one of: "
            f"{', '.join(sorted(tags))}."
        )
    groups = group_runs(runs)
    drawn = {g.label: g.finished() or g.runs for g in groups}  # a group's finished runs, if any
    if "time" in axes:
        check_times_logged([r for members in drawn.values() for r in members], x)
    ranking = ranking_metric(runs)
    rows = rank_rows(results_rows(groups, metric, ranking), ranking[1])
    table = results_markdown(rows, metric)
    out, note = claim_out_dir(paths, None if out_dir is None else Path(out_dir))
    try:
        (out / "results.md").write_text(table)
        write_csv(rows, out / "results.csv")
        for axis in axes:
            plot_convergence(
                {
                    label: [(r.curves, r.summary.get("best_epoch")) for r in members]
                    for label, members in drawn.items()
                },
                [*CURVES, *([metric] if metric not in CURVES else [])],
                out / FIGURES[axis],
                title=f"Convergence{' against training time' if axis == 'time' else ''}: "
                f"{len(runs)} runs in {len(groups)} configurations",
                x=axis,
            )
    except OSError as err:
        raise UserError(
            f"Cannot write the results to {out} ({err.strerror}); pass --out <a writable folder>."
        ) from None
    if not tags:
        note = "; ".join(filter(None, [note, "none of these runs has logged any scalars yet"]))
    return {
        "out_dir": out,
        "rows": rows,
        "table": table,
        "runs": runs,
        "duplicates": duplicates,
        "figures": [FIGURES[axis] for axis in axes],
        "note": note,
    }
