"""RunSummary: collect what a run did and write `summary.json`, on success and on failure."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

import cvexp

STATUSES = ("completed", "stopped_early", "failed", "interrupted")


class RunSummary(Callback):
    """Tracks the best validation epoch and training time; `write()` saves summary.json (rank 0 only).

    Its state (best epoch, seconds trained so far) is saved in checkpoints, so a resumed
    run continues the record instead of restarting it.
    """

    def __init__(self, path: str | Path, *, monitor: str = "val/acc", mode: str = "max") -> None:
        self.path = Path(path)
        self.monitor, self.mode = monitor, mode
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self.train_seconds = 0.0
        self._fit_started: float | None = None

    # ------------------------------------------------------------------ tracking

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_started = time.perf_counter()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop_clock()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._stop_clock()

    def _stop_clock(self) -> None:
        if self._fit_started is not None:
            self.train_seconds += time.perf_counter() - self._fit_started
            self._fit_started = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        score = float(trainer.callback_metrics[self.monitor])
        better = self.best_score is None or (
            score > self.best_score if self.mode == "max" else score < self.best_score
        )
        if better:
            self.best_score, self.best_epoch = score, trainer.current_epoch

    def state_dict(self) -> dict[str, Any]:
        seconds = self.train_seconds
        if self._fit_started is not None:
            seconds += time.perf_counter() - self._fit_started
        return {
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "train_seconds": seconds,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_score = state_dict.get("best_score")
        self.best_epoch = state_dict.get("best_epoch")
        self.train_seconds = float(state_dict.get("train_seconds", 0.0))

    # ------------------------------------------------------------------ writing

    def write(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Merge `fields` with what this callback tracked and the environment; write atomically."""
        if fields.get("status") not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {fields.get('status')!r}")
        summary = {
            "best_val_acc": self.best_score,
            "best_epoch": self.best_epoch,
            "train_seconds": round(self.train_seconds, 3),
            **fields,
            "versions": environment_versions(),
            "device": device_name(),
            "git_commit": git_commit(),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            "w", dir=self.path.parent, suffix=".tmp", delete=False
        ) as tmp:
            json.dump(summary, tmp, indent=2, default=str)
        os.replace(tmp.name, self.path)
        return summary


def environment_versions() -> dict[str, str]:
    """Versions of python, torch, lightning and cvexp."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": L.__version__,
        "cvexp": cvexp.__version__,
    }


def device_name() -> str:
    """The accelerator's name, or the CPU's."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def git_commit() -> str | None:
    """The commit of the cvexp source tree, with '-dirty' when it has uncommitted changes; None outside git."""
    source = Path(cvexp.__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if dirty else commit
