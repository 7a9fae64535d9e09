"""cvexp-compare: read runs and sweeps; write a convergence graph and a results table.

cvexp-compare multirun/2026-11-26/12-00-00
cvexp-compare outputs/run_a outputs/run_b --metric val/loss --out comparisons/ab
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from hydra.utils import instantiate
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.flop_counter import FlopCounterMode

from cvexp.app import fresh_dir
from cvexp.checkpoint import offline_net_config
from cvexp.errors import UserError
from cvexp.viz.curves import plot_convergence

CURVES = ("train/loss_epoch", "val/loss", "val/acc")
# overrides that never distinguish one configuration from another
IGNORED_KEYS = (
    "seed",
    "data.root",
    "data.download",
    "paths.log_dir",
    "ckpt_path",
    "trainer.enable_progress_bar",
)


@dataclass
class Run:
    """One job or run directory: its overrides, summary and per-epoch curves."""

    path: Path
    overrides: list[str]
    summary: dict[str, Any]
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    net_config: dict[str, Any] | None = None

    @property
    def status(self) -> str:
        return self.summary.get("status", "running")

    @property
    def config_key(self) -> tuple[str, ...]:
        """The overrides that define its configuration: everything but the seed and paths."""
        return tuple(
            sorted(o for o in self.overrides if o.split("=", 1)[0].lstrip("+~") not in IGNORED_KEYS)
        )


# ------------------------------------------------------------------ reading


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


def read_curves(tb_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Per-epoch (epoch, value) series of the CURVES tags, read with tensorboard's event reader."""
    if not tb_dir.is_dir():
        return {}
    events = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    epoch_at_step = (
        {e.step: int(e.value) for e in events.Scalars("epoch")} if "epoch" in tags else {}
    )
    curves = {}
    for tag in CURVES:
        if tag in tags:
            points = {
                epoch_at_step.get(e.step, i) + 1: e.value for i, e in enumerate(events.Scalars(tag))
            }
            curves[tag] = sorted(points.items())  # the last value per epoch wins (resumed runs)
    return curves


def read_run(path: Path) -> Run:
    """Everything cvexp-compare needs from one run directory."""
    overrides_file = path / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) or [] if overrides_file.is_file() else []
    summary_file = path / "summary.json"
    summary = (
        json.loads(summary_file.read_text()) if summary_file.is_file() else {"status": "running"}
    )
    return Run(path, list(overrides), summary, read_curves(path / "tensorboard"), _net_config(path))


def _net_config(path: Path) -> dict[str, Any] | None:
    """The run's resolved `model.net` config, from Hydra's record of the run."""
    config_file = path / ".hydra" / "config.yaml"
    if not config_file.is_file():
        return None
    try:
        config = OmegaConf.load(config_file)
        return OmegaConf.to_container(config.model.net, resolve=True)
    except Exception:  # an unreadable or foreign record: the cost columns stay empty
        return None


# ------------------------------------------------------------------ cost of a network


def count_macs_and_params(
    net_config: dict[str, Any] | None, image_size: int = 32
) -> tuple[float | None, float | None]:
    """(multiply-accumulates per image, parameters) of the net a config builds; None when it cannot be built.

    Matmuls and convolutions are counted by torch.utils.flop_counter; a layer with an
    `uncounted_macs(height, width)` method (local self-attention) adds what it cannot see.
    """
    if not net_config:
        return None, None
    try:
        net = instantiate(offline_net_config(net_config)).eval()
    except Exception:
        return None, None
    counter = FlopCounterMode(display=False)
    uncounted: list[int] = []  # layers that document what flop_counter cannot see

    def add_uncounted(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], _: Any) -> None:
        height, width = inputs[0].shape[-2:]
        uncounted.append(len(inputs[0]) * module.uncounted_macs(height, width))

    hooks = [
        m.register_forward_hook(add_uncounted)
        for m in net.modules()
        if hasattr(m, "uncounted_macs")
    ]
    with torch.no_grad(), counter:
        net(torch.rand(1, 3, image_size, image_size))
    for hook in hooks:
        hook.remove()
    macs = counter.get_total_flops() / 2 + sum(uncounted)
    return macs, float(sum(p.numel() for p in net.parameters()))


# ------------------------------------------------------------------ grouping and the table


@dataclass
class Group:
    """The runs of one configuration (they differ only in seed)."""

    label: str
    runs: list[Run]

    def finished(self) -> list[Run]:
        return [r for r in self.runs if r.status in ("completed", "stopped_early")]


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


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def results_rows(groups: list[Group], metric: str) -> list[dict[str, Any]]:
    """One row per configuration: cost, accuracy (mean, std over seeds), epochs, early stopping, time."""
    rows = []
    for group in groups:
        done = group.finished()
        macs, params = count_macs_and_params(group.runs[0].net_config)
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
            [_best(r.curves.get(metric, []), metric) for r in done if r.curves.get(metric)]
        )
        rows.append(
            {
                "configuration": group.label,
                "n": len(done),
                "status": ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())),
                "params_M": None if params is None else params / 1e6,
                "MMACs_per_image": None if macs is None else macs / 1e6,
                "GFLOPs_per_image": None if macs is None else 2 * macs / 1e9,
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
                "runs": " ".join(str(r.path) for r in group.runs),
            }
        )
    return rows


def _best(points: list[tuple[int, float]], metric: str) -> float:
    values = [v for _, v in points]
    return min(values) if "loss" in metric else max(values)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _mean_pm_std(row: dict[str, Any], key: str) -> str:
    mean, std = row[f"{key}_mean"], row[f"{key}_std"]
    return "-" if mean is None else f"{mean:.4f} ± {std:.4f}"


def markdown_table(rows: list[dict[str, Any]], metric: str) -> str:
    """The table as Markdown (accuracies as mean ± std over seeds)."""
    header = [
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
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [
            row["configuration"],
            str(row["n"]),
            row["status"],
            _fmt(row["params_M"], 3),
            _fmt(row["MMACs_per_image"], 1),
            _fmt(row["GFLOPs_per_image"], 3),
            _mean_pm_std(row, "best_val_acc"),
            _mean_pm_std(row, "test_acc"),
            _fmt(row[f"best_{metric}_mean"]),
            _fmt(row["epochs_run_mean"], 1),
            row["early_stopped"],
            _fmt(row["train_seconds_mean"], 1),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "MACs: multiply-accumulates for one 32x32 image (torch.utils.flop_counter, plus the "
        "documented count of local self-attention's q.k and weighted sum of v); FLOPs = 2 x MACs."
    )
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ the command


def compare(
    paths: list[Path], *, out_dir: Path | None = None, metric: str = "val/acc"
) -> dict[str, Any]:
    """Read the runs under `paths`; write convergence.png, results.md and results.csv; return them."""
    runs = [read_run(p) for p in find_run_dirs(paths)]
    groups = group_runs(runs)
    if out_dir is None:  # a sweep folder gets its comparison; runs are never written into
        one_sweep = len(paths) == 1 and not (paths[0] / ".hydra").is_dir()
        out_dir = (
            paths[0]
            if one_sweep
            else Path(fresh_dir(f"comparisons/{time.strftime('%Y-%m-%d_%H-%M-%S')}"))
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = results_rows(groups, metric)
    table = markdown_table(rows, metric)
    (out_dir / "results.md").write_text(table)
    with (out_dir / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    tags = list(CURVES) + ([metric] if metric not in CURVES else [])
    plot_convergence(
        {
            g.label: [(r.curves, r.summary.get("best_epoch")) for r in g.finished() or g.runs]
            for g in groups
        },
        tags,
        out_dir / "convergence.png",
        title=f"Convergence: {len(runs)} runs in {len(groups)} configurations",
    )
    return {"out_dir": out_dir, "rows": rows, "table": table, "runs": runs}


def main(argv: list[str] | None = None) -> None:
    """Console entry point `cvexp-compare`."""
    parser = argparse.ArgumentParser(
        prog="cvexp-compare", description="Compare runs: a convergence graph and a results table."
    )
    parser.add_argument("dirs", nargs="+", type=Path, help="run directories or sweep directories")
    parser.add_argument(
        "--metric", default="val/acc", help="extra curve and table column (default val/acc)"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default: the one directory given)"
    )
    args = parser.parse_args(argv)
    try:
        result = compare(args.dirs, out_dir=args.out, metric=args.metric)
    except UserError as error:
        print(f"cvexp-compare: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(result["table"])
    print(f"wrote convergence.png, results.md and results.csv to {result['out_dir']}")


if __name__ == "__main__":
    main()
