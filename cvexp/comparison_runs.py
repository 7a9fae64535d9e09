"""The runs that cvexp-compare compares: found under the folders given (each run once), read
through `RunDir` (overrides, summary, status, curves, excluded keys, the cost of the net), and
grouped into configurations.

The file reads in order: finding runs, reading one run, the cost of a run's net, grouping.
The table and the figure are written by `cvexp.comparison`.
"""

from __future__ import annotations

import csv
import functools
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from cvexp.checkpoint import offline_net_config
from cvexp.errors import UserError
from cvexp.models.cost import count_macs_and_params
from cvexp.run_record import (
    FINISHED,
    RECORD_DIR,
    STATUSES,
    SUMMARY,
    RunDir,
    override_key,
    recorded_best,
)
from cvexp.viz.curves import Curves

# where Hydra records the keys it leaves out of a job's name, below the `hydra` node
EXCLUDE_KEYS = "job.config.override_dirname.exclude_keys"
# keys whose values repeat one configuration rather than make another: the seed, and the fold of
# a cross-validation (data.fold; data.folds still tells configurations apart)
REPEAT_KEYS = frozenset({"seed", "data.fold"})
# a run without a summary: still training, or killed (SIGKILL, out of memory, power) before
# RunSummary could record how it ended; a run that fails or is interrupted records that
NO_SUMMARY = "running or killed"


# ------------------------------------------------------------------ finding runs


@dataclass(frozen=True)
class Duplicate:
    """A run reached a second time (the same folder, `Path.resolve()`d), and left out."""

    path: Path  # the run as reached the second time
    given: Path  # the folder given on the command line under which it was
    same_as: Path  # the run as reached first: the one that is counted
    same_as_given: Path  # the folder given under which that one was

    def __str__(self) -> str:
        second, first = _reached(self.path, self.given), _reached(self.same_as, self.same_as_given)
        if second == first:
            return f"dropped {second}, given twice; each run is counted once"
        return f"dropped {second}, the same run as {first}; each run is counted once"


def _reached(path: Path, given: Path) -> str:
    return str(path) if path == given else f"{path} (in {given})"


def find_run_dirs(paths: Iterable[Path]) -> tuple[list[Path], list[Duplicate]]:
    """The run directories at or below each path, in a stable order, each run once (by its
    resolved path, so that a symlink or `a/../a` is the same run), and the duplicates left out."""
    found: dict[Path, tuple[Path, Path]] = {}  # resolved -> (as reached first, the folder given)
    duplicates = []
    for path in map(Path, paths):
        if not path.exists():
            raise UserError(
                f"{path} does not exist; pass a run directory or a sweep directory (multirun/<date>/<time>)."
            )
        given = RunDir(path)
        runs = [given] if given.is_run() else given.runs_within()
        if not runs:
            raise UserError(
                f"{path} holds no runs (no {RECORD_DIR}/ folder below it); pass a run directory or a sweep directory."
            )
        for run in runs:
            real = run.path.resolve()
            if real in found:
                duplicates.append(Duplicate(run.path, path, *found[real]))
            else:
                found[real] = (run.path, path)
    return [first for first, _ in found.values()], duplicates


# ------------------------------------------------------------------ reading one run


@dataclass
class Run:
    """One job or run directory: its overrides, summary, status, per-epoch curves and the keys
    that do not define its configuration."""

    path: Path
    overrides: list[str]
    summary: dict[str, Any]  # {} when the run has no readable summary
    status: str  # `status_label`
    curves: Curves = field(default_factory=dict)
    excluded_keys: frozenset[str] = frozenset()

    @property
    def record(self) -> RunDir:
        return RunDir(self.path)

    @property
    def finished(self) -> bool:
        """Completed, stopped early or stopped by its time limit: its results count."""
        return self.summary.get("status") in FINISHED

    @property
    def config_key(self) -> tuple[str, ...]:
        """The overrides that define its configuration: all but the repeats (`REPEAT_KEYS`: seed,
        data.fold) and the excluded keys."""
        ignored = self.excluded_keys | REPEAT_KEYS
        # '+k=v' and '++k=v' (as a resume writes a key the run added) set the same value
        return tuple(
            sorted(o.lstrip("+") for o in self.overrides if override_key(o) not in ignored)
        )


def status_label(run: RunDir, summary: dict[str, Any] | None) -> str:
    """How the run ended, as far as its folder shows: the recorded status; `NO_SUMMARY` without a
    summary (no folder tells a run in progress from one killed before it could record)."""
    if summary is None:
        return f"unreadable {SUMMARY}" if run.summary_path.exists() else NO_SUMMARY
    status = summary.get("status")
    if status is None:
        return f"no status in {SUMMARY}"
    return str(status) if status in STATUSES else f"unknown status {status}"


def read_run(path: Path) -> Run:
    """Everything cvexp-compare needs from one run directory."""
    run = RunDir(path)
    summary = run.read_summary()
    return Run(
        run.path,
        run.recorded_overrides(),
        summary or {},
        status_label(run, summary),
        read_curves(run.path),
        excluded_keys(run),
    )


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


def excluded_keys(run: RunDir) -> frozenset[str]:
    """The override keys Hydra left out of the run's job name, as the run's record of Hydra's
    config holds them; the installed conf/hydra/default.yaml's list for a run without one."""
    keys = _select(run.recorded_hydra_config(), EXCLUDE_KEYS)
    if isinstance(keys, list):
        return frozenset(str(k) for k in keys)
    return default_excluded_keys()


def _select(node: Any, dotted: str) -> Any:
    """The value at a dotted key of nested dicts, or None."""
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


@functools.cache
def default_excluded_keys() -> frozenset[str]:
    """`job.config.override_dirname.exclude_keys` of the installed package's conf/hydra/default.yaml."""
    text = (resources.files("cvexp.conf") / "hydra" / "default.yaml").read_text()
    keys = OmegaConf.select(OmegaConf.create(text), EXCLUDE_KEYS)
    return frozenset(str(k) for k in keys or ())


# ------------------------------------------------------------------ the cost of a run's net


@dataclass(frozen=True)
class Cost:
    """Multiply-accumulates per 32x32 image and parameters, or a few words on why not."""

    macs: float | None = None
    params: int | None = None
    note: str = ""


def network_cost(run: RunDir) -> Cost:
    """The cost of the net that the run's recorded config (`model.net`) builds, without weights."""
    if not run.config_path.is_file():
        return Cost(note="no config")
    config = run.recorded_config()
    if config is None:
        return Cost(note="unreadable config")
    try:
        net_config = OmegaConf.select(OmegaConf.create(config), "model.net")
        if not isinstance(net_config, DictConfig):
            return Cost(note="no model.net in config")
        net_config = OmegaConf.to_container(net_config, resolve=True)
    except OmegaConfBaseException as err:
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
    """The runs of one configuration (they differ only in seed, fold and excluded keys)."""

    label: str
    runs: list[Run]

    def finished(self) -> list[Run]:
        return [r for r in self.runs if r.finished]


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
