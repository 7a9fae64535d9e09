"""Build the Lightning Trainer (callbacks, loggers) from a composed config."""

from __future__ import annotations

import logging
import re
import warnings
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


class _DropLitLoggerTip(logging.Filter):
    """Drops Lightning's "💡 Tip: ... try installing litlogger" advert, which every Trainer
    without a LitLogger prints (Lightning 2.6 has no setting to turn it off)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("💡 Tip:") and "litlogger" in message)


def quiet_lightning() -> None:
    """Silence two messages Lightning prints on every run that say nothing about the run."""
    # rank_zero_info logs the tip through this logger; a filter on the logger where the record
    # is made drops it before any handler (console or train.log) sees it
    tip_logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropLitLoggerTip) for f in tip_logger.filters):
        tip_logger.addFilter(_DropLitLoggerTip())
    # Lightning's bug, not ours: its _pytree helper (2.6.6) still builds torch's LeafSpec, which
    # the PyTorch installed here deprecates (a FutureWarning on every fit and test). Only that
    # message from that module is ignored.
    warnings.filterwarnings(
        "ignore",
        message=re.escape("`isinstance(treespec, LeafSpec)` is deprecated"),
        category=FutureWarning,
        module=r"lightning\.pytorch\.utilities\._pytree",
    )


def build_trainer(cfg: DictConfig, extra_callbacks: list[Callback] | None = None) -> L.Trainer:
    """The Trainer of `cfg.trainer` with the configured callbacks and loggers, plus `extra_callbacks`."""
    quiet_lightning()
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
