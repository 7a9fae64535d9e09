"""A run folder on disk: its layout, `summary.json` (schema, statuses) and its reads and writes.

The one module that spells the names of a run's files. Everything else (the RunSummary
callback, resume, skip_completed sweeps, SLURM/torchrun agreement, cvexp-compare, the sweep
report) asks a `RunDir` for them:

    <run>/
      .hydra/            Hydra's record: config.yaml, hydra.yaml, overrides.yaml
        launch.json      torchrun/SLURM: the launch that made the run (rank 0 writes it)
        history/<time>/  the record as it was before each resume=
        lock             held while a process writes into the run
      checkpoints/       last.ckpt (the newest state) and the best checkpoint
      summary.json       the machine-readable result (SCHEMA_VERSION, STATUSES)
      loggers.json       the MLflow run id and W&B run id, so a resumed run logs on into them
      train.log          the console log

A leaf module: the standard library, and PyYAML to read Hydra's own record.
"""

from __future__ import annotations

import json
import math
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# 2: schema_version itself, and `precision` (the precision the Trainer really used)
# 3: `test_acc_tta`, the test accuracy with test-time augmentation (tta=flip), beside
#    `test_acc` (the plain test, unchanged): null when tta is off; `test_loss_tta` with it
SCHEMA_VERSION = 3
# time_limit: stopped by trainer.max_time before max_epochs (the best checkpoint is still tested)
FINISHED = ("completed", "stopped_early", "time_limit")
STATUSES = (*FINISHED, "failed", "interrupted")

SUMMARY = "summary.json"
RECORD_DIR = ".hydra"
CHECKPOINTS = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
SWEEP_RECORD = "multirun.yaml"
SWEEP_HISTORY = "multirun_history"
# files and folders that mark a folder as holding a run or a sweep
RUN_MARKERS = (RECORD_DIR, SUMMARY, CHECKPOINTS, "tensorboard", SWEEP_RECORD)
# the scalar RunSummary logs at each validation's end, at val/acc's step: the seconds trained
# so far across resumes, validation not counted; cvexp-compare --x time plots against it
TRAIN_SECONDS = "time/train_seconds"


def override_key(override: str) -> str:
    """The key of a Hydra override: `+model.net.width=0.5` -> `model.net.width`."""
    return override.split("=", 1)[0].lstrip("+~")


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object's content, or None when the file is missing, unreadable or not an object."""
    try:
        content = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) else None


def write_json_atomically(path: Path, content: dict[str, Any]) -> None:
    """Write `content` to `path` through a temporary file and a rename, so a reader never sees
    half a file; the file's mode follows the umask (as a plain `open` would), not 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as tmp:
        json.dump(content, tmp, indent=2, default=str)
    os.chmod(tmp.name, 0o666 & ~current_umask())
    os.replace(tmp.name, path)


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def recorded_best(summary: dict[str, Any], name: str) -> float | None:
    """The best value of the metric `name` a run's summary records, or None.

    `optimized_metric.best` when the run optimised `name`; `best_val_acc` for val/acc (also
    in summaries written before optimized_metric existed).
    """
    optimized = summary.get("optimized_metric") or {}
    if optimized.get("name") == name and optimized.get("best") is not None:
        return float(optimized["best"])
    if name == "val/acc" and summary.get("best_val_acc") is not None:
        return float(summary["best_val_acc"])
    return None


def objective(summary: dict[str, Any], metric: str) -> float:
    """A run's result for a sweeper: the best value of `metric` it recorded (NaN if none)."""
    best = recorded_best(summary, metric)
    return math.nan if best is None else best


@dataclass(frozen=True)
class RunDir:
    """One run's folder, and what it holds."""

    path: Path

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path))

    # ------------------------------------------------------------------ the layout

    @property
    def summary_path(self) -> Path:
        return self.path / SUMMARY

    @property
    def record_dir(self) -> Path:
        """Hydra's record of the run (`hydra.output_subdir`)."""
        return self.path / RECORD_DIR

    @property
    def overrides_path(self) -> Path:
        return self.record_dir / "overrides.yaml"

    @property
    def hydra_record_path(self) -> Path:
        return self.record_dir / "hydra.yaml"

    @property
    def config_path(self) -> Path:
        return self.record_dir / "config.yaml"

    @property
    def launch_record_path(self) -> Path:
        return self.record_dir / "launch.json"

    @property
    def history_dir(self) -> Path:
        return self.record_dir / "history"

    @property
    def lock_path(self) -> Path:
        return self.record_dir / "lock"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints_dir / LAST_CHECKPOINT

    @property
    def train_log(self) -> Path:
        return self.path / "train.log"

    @property
    def logger_ids_path(self) -> Path:
        return self.path / "loggers.json"

    @property
    def sweep_record_path(self) -> Path:
        return self.path / SWEEP_RECORD

    @property
    def sweep_history_dir(self) -> Path:
        """A sweep's earlier `multirun.yaml` files, one `<time>.yaml` per skip_completed rerun."""
        return self.path / SWEEP_HISTORY

    # ------------------------------------------------------------------ what it holds

    def holds_a_run(self) -> bool:
        """Whether the folder already holds the files of a run or a sweep."""
        return self.path.is_dir() and any((self.path / name).exists() for name in RUN_MARKERS)

    def is_run(self) -> bool:
        """Whether the folder is a single run made by a cvexp command (it has Hydra's record)."""
        return self.overrides_path.is_file()

    def read_summary(self) -> dict[str, Any] | None:
        """The run's summary.json, or None when it has none (or an unreadable one)."""
        return read_json(self.summary_path)

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Write summary.json atomically, with its schema version; refuse an unknown status."""
        if summary.get("status") not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {summary.get('status')!r}")
        write_json_atomically(self.summary_path, {"schema_version": SCHEMA_VERSION, **summary})

    def finished_summary(self) -> dict[str, Any] | None:
        """The summary of a run that finished (completed, stopped early, time limit), or None."""
        summary = self.read_summary()
        return summary if summary is not None and summary.get("status") in FINISHED else None

    def was_stopped(self) -> bool:
        """Whether the run was interrupted, or killed before it could record why.

        A run that failed with an error, or finished, was not stopped.
        """
        summary = self.read_summary()
        return (
            summary is None
            or summary.get("status") == "interrupted"
            or (summary.get("status") not in FINISHED and not summary.get("error"))
        )

    def recorded_overrides(self) -> list[str]:
        """The command-line overrides Hydra recorded for the run (`.hydra/overrides.yaml`)."""
        return [str(o) for o in _read_yaml(self.overrides_path) or []]

    def recorded_hydra_overrides(self) -> list[str]:
        """The run's own `hydra.*` overrides (a search path, a launcher), as recorded."""
        hydra_cfg = (_read_yaml(self.hydra_record_path) or {}).get("hydra", {})
        return [str(o) for o in (hydra_cfg.get("overrides") or {}).get("hydra") or []]

    def recorded_hydra_config(self) -> dict[str, Any] | None:
        """Hydra's own config as the run recorded it (the `hydra` node of `.hydra/hydra.yaml`:
        the job's name settings, the launcher, the sweeper), or None without a readable record."""
        content = _read_yaml(self.hydra_record_path)
        hydra_cfg = content.get("hydra") if isinstance(content, dict) else None
        return hydra_cfg if isinstance(hydra_cfg, dict) else None

    def recorded_config(self) -> dict[str, Any] | None:
        """The composed config the run recorded (`.hydra/config.yaml`), or None."""
        content = _read_yaml(self.config_path)
        return content if isinstance(content, dict) else None

    def runs_within(self) -> list[RunDir]:
        """Every run (`is_run`) at or below this folder: the folder itself when it is a run, a
        sweep's jobs, a folder of runs; in path order. The copies in a record's history are none."""
        found = self.path.rglob(f"{RECORD_DIR}/{self.overrides_path.name}")
        return [RunDir(path) for path in sorted({p.parent.parent for p in found})]

    def logger_id(self, logger: str) -> str | None:
        """The id of the run this run folder logs into with `logger` (mlflow, wandb), if any."""
        value = (read_json(self.logger_ids_path) or {}).get(logger)
        return str(value) if value else None

    def record_logger_id(self, logger: str, run_id: str) -> None:
        """Keep the id of the run `logger` logs into, for a resume to continue it."""
        ids = read_json(self.logger_ids_path) or {}
        if ids.get(logger) != run_id:
            write_json_atomically(self.logger_ids_path, {**ids, logger: run_id})

    def read_launch_record(self) -> dict[str, Any] | None:
        return read_json(self.launch_record_path)

    def write_launch_record(self, record: dict[str, Any]) -> None:
        write_json_atomically(self.launch_record_path, record)


class RunInUse(Exception):
    """Another live process writes into this run folder."""


def claim_lock(run: RunDir) -> None:
    """Mark the run folder as in use by this process (`.hydra/lock`: host and pid).

    Refused with RunInUse while the process that holds it is alive (on this host); a lock left
    by a process that died (killed) is taken over. A lock written on another host cannot be
    checked from here: it is trusted for a day, then taken over.
    """
    run.record_dir.mkdir(parents=True, exist_ok=True)
    mine = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
    while True:
        try:
            fd = os.open(run.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            holder = read_json(run.lock_path)
            if holder is None and _younger_than(run.lock_path, seconds=10):
                raise RunInUse("a process that is just starting") from None  # still writing it
            holder = holder or {}
            if holder.get("host") == mine["host"] and holder.get("pid") == mine["pid"]:
                return  # this process holds it already
            if _alive(holder):
                raise RunInUse(f"process {holder.get('pid')} on {holder.get('host')}") from None
            run.lock_path.unlink(missing_ok=True)  # left by a process that is gone
            continue
        with os.fdopen(fd, "w") as file:
            json.dump(mine, file)
        return


def release_lock(run: RunDir) -> None:
    """Remove the run's lock, when this process holds it."""
    holder = read_json(run.lock_path) or {}
    if holder.get("host") == socket.gethostname() and holder.get("pid") == os.getpid():
        run.lock_path.unlink(missing_ok=True)


def _younger_than(path: Path, *, seconds: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime < seconds
    except OSError:
        return False


def in_use(run: RunDir) -> bool:
    """Whether a live process holds the run's lock."""
    holder = read_json(run.lock_path)
    return holder is not None and _alive(holder)


def _alive(holder: dict[str, Any]) -> bool:
    """Whether the lock's holder still runs (a lock of another host: for a day)."""
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return False
    if holder.get("host") != socket.gethostname():
        return time.time() - float(holder.get("since") or 0) < 24 * 3600
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None


def runs_with_launch_records(root: Path) -> list[RunDir]:
    """Every run under `root` (`<root>/<date>/<time>`) that holds a launch record."""
    return [RunDir(path.parent.parent) for path in root.glob(f"*/*/{RECORD_DIR}/launch.json")]


def latest_unfinished_run(root: Path) -> RunDir | None:
    """The newest single run under `root` (`<root>/<date>/<time>`) that has a last.ckpt, did not
    finish (interrupted, killed, or failed) and is not running now, by the time of its
    last.ckpt; None if none."""
    candidates = [
        run
        for run in (
            RunDir(path.parent.parent) for path in root.glob(f"*/*/{CHECKPOINTS}/{LAST_CHECKPOINT}")
        )
        if run.is_run() and run.finished_summary() is None and not in_use(run)
    ]
    return max(candidates, key=lambda run: run.last_checkpoint.stat().st_mtime, default=None)
