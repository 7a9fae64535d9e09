"""Finish a sweep in its own folder: `skip_completed=true` skips the jobs that already finished.

Run the same sweep again into the same folder (`hydra.sweep.dir=<it>`, or an Optuna search,
whose folder is fixed by its study name) with `skip_completed=true`:

- a job whose summary.json says it finished (completed, stopped early or at its time limit) is
  not run again, and its files, `.hydra/` included, stay as they were; the sweeper gets the
  job's recorded result;
- a job that was interrupted, or killed before it could record why, continues from its
  `checkpoints/last.ckpt`, in place;
- any other job (failed with an error, or never started) runs from the start.

The jobs are matched by their folder names, which hold only the values the sweep varies:
run the same command again (a changed constant override is not noticed).

RunDirectory sets SKIP_COMPLETED_ENV for the sweep, so that the `record_subdir` resolver (Hydra's
`hydra.output_subdir`) can tell Hydra not to rewrite a finished job's `.hydra/` record.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from cvexp.callbacks.run_summary import FINISHED, read_json, recorded_best
from cvexp.runtime.run_dir import quoted

SKIP_COMPLETED_ENV = "CVEXP_SKIP_COMPLETED"
RECORD_SUBDIR = ".hydra"


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """The run's summary.json, or None when it has none (or an unreadable one)."""
    return read_json(run_dir / "summary.json")


def finished_summary(run_dir: Path) -> dict[str, Any] | None:
    """The summary of a run that finished, or None."""
    summary = read_summary(run_dir)
    return summary if summary is not None and summary.get("status") in FINISHED else None


def record_subdir(*, _root_: DictConfig) -> str | None:
    """`hydra.output_subdir`: `.hydra`, or None (no record written) for a finished job that this
    sweep skips, so that its recorded config stays as it was."""
    if os.environ.get(SKIP_COMPLETED_ENV) != "1":
        return RECORD_SUBDIR
    output_dir = OmegaConf.select(_root_, "hydra.runtime.output_dir", default=None)
    if output_dir and finished_summary(Path(str(output_dir))) is not None:
        return None
    return RECORD_SUBDIR


def skipping(cfg: DictConfig) -> bool:
    """Whether this process runs a job of a sweep that skips finished jobs."""
    from cvexp.runtime.hydra_app import in_multirun

    return bool(cfg.get("skip_completed")) and in_multirun()


def earlier_result(cfg: DictConfig) -> dict[str, Any] | None:
    """The summary of this job's earlier, finished run when the sweep skips finished jobs."""
    return finished_summary(Path(str(cfg.paths.output_dir))) if skipping(cfg) else None


def continue_interrupted(cfg: DictConfig) -> str | None:
    """When this job was interrupted in an earlier run of the sweep, set `ckpt_path` to its
    last.ckpt (the fit continues in place) and return it; otherwise change nothing."""
    if not skipping(cfg) or cfg.get("ckpt_path"):
        return None
    run_dir = Path(str(cfg.paths.output_dir))
    summary = read_summary(run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    # interrupted, or killed before it could say so (no summary, or one without an error);
    # a job that failed with an error runs again from the start
    stopped = (
        summary is None
        or summary.get("status") == "interrupted"
        or (summary.get("status") not in FINISHED and not summary.get("error"))
    )
    if not stopped or not last.is_file():
        return None
    with open_dict(cfg):
        cfg.ckpt_path = str(last)
    if HydraConfig.initialized():  # DDP's other ranks start from the job's overrides: them too
        overrides = HydraConfig.get().overrides
        with read_write(overrides):
            overrides.task.append(f"ckpt_path={quoted(last)}")
    return str(last)


def objective(summary: dict[str, Any], metric: str) -> float:
    """A run's result for a sweeper: the best value of `metric` it recorded (NaN if none)."""
    best = recorded_best(summary, metric)
    return math.nan if best is None else best
