"""cvexp-compare: read runs and sweeps; write a convergence graph and a results table.

cvexp-compare multirun/2026-11-26/12-00-00
cvexp-compare outputs/run_a outputs/run_b --metric val/loss --out comparisons/ab

The file reads in order: reading runs (overrides, summary, curves, the cost of the net),
grouping them into configurations, the tables, and where the results go.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import statistics
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from cvexp.callbacks.run_summary import FINISHED, recorded_best
from cvexp.checkpoint import offline_net_config
from cvexp.models.cost import count_macs_and_params
from cvexp.errors import UserError
from cvexp.runtime.run_dir import claim_fresh_dir
from cvexp.viz.curves import Curves, plot_convergence
from cvexp.viz.tables import markdown_table

CURVES = ("train/loss_epoch", "val/loss", "val/acc")  # the graph's panels, plus --metric
RESULT_FILES = ("results.md", "results.csv", "convergence.png")
EXCLUDE_KEYS = "hydra.job.config.override_dirname.exclude_keys"  # in a run's .hydra/hydra.yaml


# ------------------------------------------------------------------ reading runs


@dataclass
class Run:
    """One job or run directory: its overrides, summary, per-epoch curves and ignored keys."""

    path: Path
    overrides: list[str]
    summary: dict[str, Any]
    curves: Curves = field(default_factory=dict)
    excluded_keys: frozenset[str] = frozenset()

    @property
    def status(self) -> str:
        return self.summary.get("status", "running")

    @property
    def config_key(self) -> tuple[str, ...]:
        """The overrides that define its configuration: all but the seed and the excluded keys."""
        ignored = self.excluded_keys | {"seed"}
        return tuple(sorted(o for o in self.overrides if _override_key(o) not in ignored))


def _override_key(override: str) -> str:
    """`model.net.depth` of `+model.net.depth=11` (Hydra's +, ++ and ~ prefixes dropped)."""
    return override.split("=", 1)[0].lstrip("+~")


def find_run_dirs(paths: Iterable[Path]) -> list[Path]:
    """Run directories (those with .hydra/) at or below each path, in a stable order."""
    found: list[Path] = []
    for path in paths:
        if not path.exists():
            raise UserError(
                f"{path} does not exist; pass a run directory or a sweep directory (multirun/<date>/<time>)."
            )
        if (path / ".hydra").is_dir():
            found.append(path)
            continue
        runs = sorted({p.parent.parent for p in path.rglob(".hydra/config.yaml")})
        if not runs:
            raise UserError(
                f"{path} holds no runs (no .hydra/ folder below it); pass a run directory or a sweep directory."
            )
        found.extend(runs)
    return found


def read_run(path: Path) -> Run:
    """Everything cvexp-compare needs from one run directory."""
    overrides_file = path / ".hydra" / "overrides.yaml"
    overrides = (
        (yaml.safe_load(overrides_file.read_text()) or []) if overrides_file.is_file() else []
    )
    summary_file = path / "summary.json"
    try:
        summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        summary = {"status": "unreadable summary.json"}
    return Run(path, [str(o) for o in overrides], summary, read_curves(path), excluded_keys(path))


def read_curves(run_dir: Path) -> Curves:
    """Every scalar the run logged, per epoch: from TensorBoard, else from CSVLogger's metrics.csv."""
    return read_tensorboard(run_dir / "tensorboard") or read_metrics_csv(run_dir)


def read_tensorboard(tb_dir: Path) -> Curves:
    """(epoch, value) series of every scalar tag in an event folder; epochs come from the
    `epoch` scalar that Lightning logs at every step (1-based, the last value per epoch wins)."""
    if not tb_dir.is_dir():
        return {}
    events = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0, "images": 1})
    events.Reload()
    tags = events.Tags()["scalars"]
    epoch_at_step = (
        {e.step: int(e.value) for e in events.Scalars("epoch")} if "epoch" in tags else {}
    )
    curves = {}
    for tag in tags:
        if tag != "epoch":
            points = {
                epoch_at_step.get(e.step, i) + 1: e.value for i, e in enumerate(events.Scalars(tag))
            }
            curves[tag] = sorted(points.items())  # resumed runs: the later value wins
    return curves


def read_metrics_csv(run_dir: Path) -> Curves:
    """(epoch, value) series of every column of Lightning's CSVLogger files (**/metrics.csv)."""
    points: dict[str, dict[int, float]] = {}
    for file in sorted(run_dir.rglob("metrics.csv")):
        with file.open(newline="") as f:
            for i, row in enumerate(csv.DictReader(f)):
                epoch = _number(row.get("epoch"))
                key = int(i if epoch is None else epoch) + 1  # 1-based, as from TensorBoard
                for name, text in row.items():
                    value = _number(text)
                    if name not in (None, "epoch", "step") and value is not None:
                        points.setdefault(name, {})[key] = value  # the last value per epoch wins
    return {tag: sorted(series.items()) for tag, series in points.items()}


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def excluded_keys(run_dir: Path) -> frozenset[str]:
    """The override keys Hydra left out of the run's job name, as its .hydra/hydra.yaml records
    them; the installed conf/hydra/default.yaml's list for a run without that record."""
    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    if hydra_file.is_file():
        try:
            keys = OmegaConf.select(OmegaConf.load(hydra_file), EXCLUDE_KEYS)
        except (OmegaConfBaseException, yaml.YAMLError, OSError, UnicodeDecodeError):
            keys = None  # an unreadable record: the package's own list below
        if keys is not None:
            return frozenset(str(k) for k in keys)
    return default_excluded_keys()


@functools.cache
def default_excluded_keys() -> frozenset[str]:
    """`job.config.override_dirname.exclude_keys` of the installed package's conf/hydra/default.yaml."""
    text = (resources.files("cvexp.conf") / "hydra" / "default.yaml").read_text()
    keys = OmegaConf.select(OmegaConf.create(text), EXCLUDE_KEYS.removeprefix("hydra."))
    return frozenset(str(k) for k in keys or ())


# ------------------------------------------------------------------ the cost of a run's net


@dataclass(frozen=True)
class Cost:
    """Multiply-accumulates per 32x32 image and parameters, or a few words on why not."""

    macs: float | None = None
    params: int | None = None
    note: str = ""


def network_cost(run_dir: Path) -> Cost:
    """The cost of the net that the run's recorded config (`model.net`) builds, without weights."""
    config_file = run_dir / ".hydra" / "config.yaml"
    if not config_file.is_file():
        return Cost(note="no config")
    try:
        net_config = OmegaConf.select(OmegaConf.load(config_file), "model.net")
        if not isinstance(net_config, DictConfig):
            return Cost(note="no model.net in config")
        net_config = OmegaConf.to_container(net_config, resolve=True)
    except (OmegaConfBaseException, yaml.YAMLError, OSError, UnicodeDecodeError) as err:
        return Cost(note=f"unreadable config: {_short(err)}")
    return _cost_of(json.dumps(net_config, sort_keys=True, default=str))


@functools.cache
def _cost_of(net_config_json: str) -> Cost:
    """Build the net (offline: no pretrained weights) and count it; one count per distinct config."""
    net_config = json.loads(net_config_json)
    try:
        net = instantiate(offline_net_config(net_config))
    except InstantiationException as err:
        if isinstance(err.__cause__, ImportError):
            return Cost(note=f"cannot build: cannot import {net_config.get('_target_')}")
        return Cost(note=f"cannot build: {_short(err.__cause__ or err)}")
    if not isinstance(net, nn.Module):
        return Cost(note="cannot build: model.net is not a network")
    try:
        macs, params = count_macs_and_params(net)
    # a net that cannot take a 32x32 image (shape checks raise these; timm asserts input sizes)
    except (RuntimeError, ValueError, AssertionError) as err:
        return Cost(
            params=sum(p.numel() for p in net.parameters()), note=f"cannot run: {_short(err)}"
        )
    return Cost(macs, params)


def _short(error: BaseException, limit: int = 80) -> str:
    """The gist of an error: its first line up to the first '; ' (where the fix starts)."""
    text = (str(error).strip().splitlines() or [type(error).__name__])[0].split("; ")[0]
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ------------------------------------------------------------------ grouping


@dataclass
class Group:
    """The runs of one configuration (they differ only in seed and excluded keys)."""

    label: str
    runs: list[Run]

    def finished(self) -> list[Run]:
        return [r for r in self.runs if r.status in FINISHED]


def group_runs(runs: list[Run]) -> list[Group]:
    """Group by configuration; label each by the overrides that vary between configurations."""
    keys: dict[tuple[str, ...], list[Run]] = {}
    for run in runs:
        keys.setdefault(run.config_key, []).append(run)
    all_items = [dict(o.split("=", 1) for o in key if "=" in o) for key in keys]
    varying = sorted(
        {k for items in all_items for k in items if len({i.get(k) for i in all_items}) > 1}
    )
    groups = []
    for key, members in keys.items():
        items = dict(o.split("=", 1) for o in key if "=" in o)
        label = ", ".join(f"{k}={items[k]}" for k in varying if k in items)
        groups.append(
            Group(label or members[0].summary.get("model") or ", ".join(key) or "default", members)
        )
    return groups


def logged_tags(runs: list[Run]) -> set[str]:
    """Every scalar tag that at least one run logged."""
    return {tag for run in runs for tag in run.curves}


# ------------------------------------------------------------------ the tables


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _best(points: list[tuple[int, float]], metric: str) -> float:
    """The best value of a curve: the minimum of a loss, else the maximum."""
    values = [v for _, v in points]
    return min(values) if "loss" in metric else max(values)


def ranking_metric(runs: list[Run]) -> tuple[str, str]:
    """What the runs optimised, as their summaries record it (`optimized_metric` name and mode);
    val/acc, higher is better, when they record none or do not agree."""
    recorded = {
        (str(o["name"]), str(o.get("mode", "max")))
        for run in runs
        if isinstance(o := run.summary.get("optimized_metric"), dict) and o.get("name")
    }
    return recorded.pop() if len(recorded) == 1 else ("val/acc", "max")


def run_best(run: Run, name: str, mode: str) -> float | None:
    """A run's best value of `name`: from its summary, else from its logged curve."""
    best = recorded_best(run.summary, name)
    if best is not None:
        return best
    values = [v for _, v in run.curves.get(name, [])]
    return (max(values) if mode == "max" else min(values)) if values else None


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
    time, and the mean best of the `ranking` metric (name, mode) that the table is ranked by."""
    rows = []
    for group in groups:
        done = group.finished()
        recorded = [r for r in group.runs if (r.path / ".hydra" / "config.yaml").is_file()]
        cost = network_cost((recorded or group.runs)[0].path)
        statuses: dict[str, int] = {}
        for run in group.runs:
            statuses[run.status] = statuses.get(run.status, 0) + 1
        best_val = _mean_std(
            [r.summary["best_val_acc"] for r in done if r.summary.get("best_val_acc") is not None]
        )
        test = _mean_std(
            [r.summary["test_acc"] for r in done if r.summary.get("test_acc") is not None]
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
                f"best_{metric}_mean": best_metric[0],
                "epochs_run_mean": _mean_std([r.summary.get("epochs_run", 0) for r in done])[0],
                "early_stopped": f"{sum(r.status == 'stopped_early' for r in done)}/{len(done)}",
                "train_seconds_mean": _mean_std(
                    [r.summary.get("train_seconds", 0.0) for r in done]
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
    """The table as Markdown (accuracies as mean ± std over seeds), with a note on the cost."""
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
        f"best {metric}",
        "epochs",
        "early stop",
        "train time (s)",
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
                _fmt(row[f"best_{metric}_mean"]),
                _fmt(row["epochs_run_mean"], 1),
                row["early_stopped"],
                _fmt(row["train_seconds_mean"], 1),
            ]
        )
    note = (
        "MACs: multiply-accumulates for one 32x32 image (torch.utils.flop_counter, plus the "
        "documented count of local self-attention's q.k and weighted sum of v); FLOPs = 2 x MACs."
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
    run = next((p for p in (where, *where.parents) if (p / ".hydra").is_dir()), None)
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
    if len(paths) == 1 and not (paths[0] / ".hydra").is_dir():
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


# ------------------------------------------------------------------ the command


def compare(
    paths: list[Path], *, out_dir: Path | None = None, metric: str = "val/acc"
) -> dict[str, Any]:
    """Read the runs under `paths`; write convergence.png, results.md and results.csv; return them."""
    paths = [Path(p) for p in paths]
    if out_dir is not None:
        check_out_dir(Path(out_dir))
    runs = [read_run(p) for p in find_run_dirs(paths)]
    tags = logged_tags(runs)
    if tags and metric not in tags:
        raise UserError(
            f"--metric {metric} is not logged by any of these runs; pass one of: "
            f"{', '.join(sorted(tags))}."
        )
    groups = group_runs(runs)
    ranking = ranking_metric(runs)
    rows = rank_rows(results_rows(groups, metric, ranking), ranking[1])
    table = results_markdown(rows, metric)
    out, note = claim_out_dir(paths, None if out_dir is None else Path(out_dir))
    try:
        (out / "results.md").write_text(table)
        write_csv(rows, out / "results.csv")
        plot_convergence(
            {
                g.label: [(r.curves, r.summary.get("best_epoch")) for r in g.finished() or g.runs]
                for g in groups
            },
            [*CURVES, *([metric] if metric not in CURVES else [])],
            out / "convergence.png",
            title=f"Convergence: {len(runs)} runs in {len(groups)} configurations",
        )
    except OSError as err:
        raise UserError(
            f"Cannot write the results to {out} ({err.strerror}); pass --out <a writable folder>."
        ) from None
    if not tags:
        note = "; ".join(filter(None, [note, "none of these runs has logged any scalars yet"]))
    return {"out_dir": out, "rows": rows, "table": table, "runs": runs, "note": note}


def main(argv: list[str] | None = None) -> None:
    """Console entry point `cvexp-compare`."""
    parser = argparse.ArgumentParser(
        prog="cvexp-compare", description="Compare runs: a convergence graph and a results table."
    )
    parser.add_argument("dirs", nargs="+", type=Path, help="run directories or sweep directories")
    parser.add_argument(
        "--metric",
        default="val/acc",
        help="any logged scalar, e.g. val/loss or train/acc: an extra curve and table column "
        "(default val/acc)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="a new output folder (default: the one sweep directory given, or a fresh "
        "comparison-N inside it, or comparisons/<date>_<time>); never replaces earlier results",
    )
    args = parser.parse_args(argv)
    try:
        result = compare(args.dirs, out_dir=args.out, metric=args.metric)
    except UserError as error:
        print(f"cvexp-compare: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(result["table"])
    if result["note"]:
        print(f"note: {result['note']}")
    print(f"wrote convergence.png, results.md and results.csv to {result['out_dir']}")


if __name__ == "__main__":
    main()
