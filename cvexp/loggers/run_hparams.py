"""The run's knobs and results for every logger: TensorBoard's HPARAMS tab, CSV, MLflow, W&B."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger, WandbLogger


def log_hparams(trainer: L.Trainer, hparams: dict[str, Any], summary: dict[str, Any]) -> None:
    """TensorBoard's HPARAMS tab, once, with the real best val/acc and test/acc."""
    metrics = {
        "hp/best_val_acc": summary.get("best_val_acc"),
        "hp/test_acc": summary.get("test_acc"),
    }
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(hparams, {k: v for k, v in metrics.items() if v is not None})
            logger.finalize("success")


def finish_wandb_runs(trainer: L.Trainer, *, failed: bool) -> None:
    """End the run's W&B run, so that its log is complete on disk and the next job of a sweep
    (in this process) starts a run of its own instead of logging into this one."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger.experiment.finish(exit_code=1 if failed else 0)


def log_run_hparams(trainer: L.Trainer, hparams: dict[str, Any]) -> None:
    """The same knobs, tags included, for the other loggers when the fit starts: a CSVLogger's
    hparams.yaml, MLflow's params, W&B's config."""
    for logger in trainer.loggers:
        if isinstance(logger, (CSVLogger, MLFlowLogger, WandbLogger)):
            logger.log_hyperparams(hparams)
