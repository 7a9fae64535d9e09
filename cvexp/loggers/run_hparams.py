"""The run's knobs and results for every logger: TensorBoard's HPARAMS tab, CSV, MLflow, W&B."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger, WandbLogger

from cvexp.run_record import RunDir


def log_hparams(trainer: L.Trainer, hparams: dict[str, Any], summary: dict[str, Any]) -> None:
    """TensorBoard's HPARAMS tab, once, with the real best val/acc and test/acc."""
    metrics = {
        "hp/best_val_acc": summary.get("best_val_acc"),
        "hp/test_acc": summary.get("test_acc"),
        "hp/test_acc_tta": summary.get("test_acc_tta"),  # only with tta=flip
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
        if isinstance(logger, MLFlowLogger):
            log_mlflow_params(logger, hparams)
        elif isinstance(logger, (CSVLogger, WandbLogger)):
            logger.log_hyperparams(hparams)


def log_mlflow_params(logger: MLFlowLogger, hparams: dict[str, Any]) -> None:
    """MLflow's params, which a run keeps for good: a resumed run logs the new keys, and a
    value that changed (trainer.max_epochs, say) as the tag `resumed/<key>`."""
    client, run_id = logger.experiment, logger.run_id
    logged = client.get_run(run_id).data.params
    for key, value in flat_params(hparams).items():
        if key not in logged:
            client.log_param(run_id, key, value)
        elif logged[key] != value:
            client.set_tag(run_id, f"resumed/{key}", value)


def flat_params(hparams: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested knobs as MLflow params: `optimizer/lr` -> '0.05' (as Lightning flattens them)."""
    flat: dict[str, str] = {}
    for key, value in hparams.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_params(value, f"{name}/"))
        else:
            flat[name] = str(value)
    return flat


def record_tracking_run_ids(trainer: L.Trainer, run: RunDir) -> None:
    """Keep the MLflow and W&B run ids in the run folder (`loggers.json`): the logger configs
    read them back (`${logger_run_id:...}`), so a resumed run logs on into the same runs."""
    for logger in trainer.loggers:
        if isinstance(logger, MLFlowLogger) and logger.run_id:
            run.record_logger_id("mlflow", str(logger.run_id))
        elif isinstance(logger, WandbLogger):
            run.record_logger_id("wandb", str(logger.experiment.id))
