"""Build the Lightning Trainer (callbacks, loggers) from a composed config."""

from __future__ import annotations

from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import Callback, ProgressBar
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig

from cvexp.errors import UserError


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Build every entry of a config group that has a `_target_` (null entries switch one off)."""
    if not group:
        return []
    return [
        instantiate(entry) for entry in group.values() if entry is not None and "_target_" in entry
    ]


def build_trainer(cfg: DictConfig, extra_callbacks: list[Callback] | None = None) -> L.Trainer:
    """The Trainer of `cfg.trainer` with the configured callbacks and loggers, plus `extra_callbacks`."""
    callbacks: list[Callback] = [*instantiate_group(cfg.get("callbacks")), *(extra_callbacks or [])]
    if not cfg.trainer.get("enable_progress_bar", True):  # Lightning refuses a bar callback then
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    loggers: list[Logger] = instantiate_group(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    if cfg.trainer.get("sync_batchnorm") and isinstance(trainer.accelerator, CPUAccelerator):
        raise UserError(
            "trainer.sync_batchnorm=true needs GPUs; pass trainer.sync_batchnorm=false on CPU."
        )
    return trainer


def writes_step_metrics(trainer: L.Trainer) -> bool:
    """Whether the Trainer writes step metrics to its loggers after the current training step.

    Lightning writes them after steps where (global_step + 1) % log_every_n_steps == 0 (every
    step under fast_dev_run; never when log_every_n_steps is 0) and drops the step values
    logged in other steps, so logging them there only costs host time.
    """
    every = trainer.log_every_n_steps
    if trainer.fast_dev_run:
        return True
    return every > 0 and (trainer.global_step + 1) % every == 0
