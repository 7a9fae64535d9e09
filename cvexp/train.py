"""cvexp-train: fit on the train split, early-stop on the val split, test the best checkpoint."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, ProgressBar
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from cvexp.app import (
    CONFIG_PATH,
    VERSION_BASE,
    exit_on_user_error,
    register_resolvers,
    user_error_message,
)
from cvexp.callbacks.interrupt_checkpoint import InterruptCheckpoint
from cvexp.callbacks.run_summary import RunSummary
from cvexp.checkpoint import read_checkpoint
from cvexp.data import CIFAR10DataModule
from cvexp.errors import UserError
from cvexp.launch import ddp_relaunch_in_place, resume_argv
from cvexp.module import ImageClassifier, build_classifier


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Build every entry of a config group that has a `_target_` (null entries switch one off)."""
    if not group:
        return []
    return [
        instantiate(entry) for entry in group.values() if entry is not None and "_target_" in entry
    ]


def run_choices() -> dict[str, Any]:
    """The config-group choices and overrides of this run, when Hydra made it."""
    if not HydraConfig.initialized():
        return {"model": None, "overrides": []}
    hydra_cfg = HydraConfig.get()
    return {
        "model": hydra_cfg.runtime.choices.get("model"),
        "overrides": list(hydra_cfg.overrides.task),
    }


def hparams_for_tensorboard(cfg: DictConfig) -> dict[str, Any]:
    """The knobs worth comparing in TensorBoard's HPARAMS tab, as plain values."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    return {
        "model": run_choices()["model"] or model["net"]["_target_"],
        "seed": cfg.get("seed"),
        "net": {k: v for k, v in model["net"].items() if not k.startswith("_")},
        "optimizer": {
            k: v for k, v in (model.get("optimizer") or {}).items() if not k.startswith("_")
        },
        "batch_size": cfg.data.get("batch_size"),
        "val_size": cfg.data.get("val_size"),
        "max_epochs": cfg.trainer.get("max_epochs"),
    }


def _best_path(checkpointing: ModelCheckpoint | None) -> str | None:
    return (checkpointing.best_model_path or None) if checkpointing is not None else None


def _last_path(checkpointing: ModelCheckpoint | None) -> str | None:
    return (checkpointing.last_model_path or None) if checkpointing is not None else None


def test_best_checkpoint(
    trainer: L.Trainer,
    classifier: ImageClassifier,
    datamodule: L.LightningDataModule,
    best: str | None,
) -> dict[str, Any]:
    """Load the best checkpoint's weights (safely) and test them on the official test set.

    Only the weights are loaded, so the callbacks keep their end-of-fit state.
    """
    if best:
        classifier.load_state_dict(read_checkpoint(best)["state_dict"])
    results = trainer.test(classifier, datamodule=datamodule)
    return {
        "test_acc": results[0].get("test/acc") if results else None,
        "test_loss": results[0].get("test/loss") if results else None,
        "tested_checkpoint": best or "the last weights (no best checkpoint was saved)",
    }


def build_trainer(
    cfg: DictConfig, extra_callbacks: list[Callback]
) -> tuple[L.Trainer, list[Logger]]:
    """The Trainer with the configured callbacks and loggers, plus `extra_callbacks`."""
    callbacks: list[Callback] = [*instantiate_group(cfg.get("callbacks")), *extra_callbacks]
    if not cfg.trainer.get("enable_progress_bar", True):  # Lightning refuses a bar callback then
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    loggers: list[Logger] = instantiate_group(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    if cfg.trainer.get("sync_batchnorm") and isinstance(trainer.accelerator, CPUAccelerator):
        raise UserError(
            "trainer.sync_batchnorm=true needs GPUs; pass trainer.sync_batchnorm=false on CPU."
        )
    return trainer, loggers


def log_hparams_with_results(
    loggers: list[Logger], cfg: DictConfig, summary: dict[str, Any]
) -> None:
    """Fill TensorBoard's HPARAMS tab once, at the end, with the real best val/acc and test/acc."""
    metrics = {
        "hp/best_val_acc": summary.get("best_val_acc"),
        "hp/test_acc": summary.get("test_acc"),
    }
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(
                hparams_for_tensorboard(cfg), {k: v for k, v in metrics.items() if v is not None}
            )
            logger.finalize("success")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, then test the best checkpoint on the official test set; returns the run's summary.

    summary.json is written in every case: completed, stopped early, failed (with the
    error) or interrupted, also when the run fails before training starts.
    """
    run_dir = Path(cfg.paths.output_dir)
    summary_callback = RunSummary(run_dir / "summary.json")
    fields: dict[str, Any] = {
        "status": "failed",
        **run_choices(),
        "seed": cfg.get("seed"),
        "run_dir": str(run_dir),
    }
    datamodule = trainer = checkpointing = None
    loggers: list[Logger] = []
    try:
        if cfg.get("seed") is not None:
            L.seed_everything(cfg.seed, workers=True)
        datamodule = instantiate(cfg.data)
        classifier = build_classifier(cfg.model)
        fields["params"] = sum(p.numel() for p in classifier.net.parameters())
        fields["trainable_params"] = sum(
            p.numel() for p in classifier.net.parameters() if p.requires_grad
        )
        trainer, loggers = build_trainer(cfg, [summary_callback, InterruptCheckpoint()])
        datamodule.per_device_batch_size(trainer.world_size)  # fail before any process starts
        checkpointing = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
        early_stopping = next((c for c in trainer.callbacks if isinstance(c, EarlyStopping)), None)

        trust = bool(cfg.get("trust_checkpoint", False))
        if cfg.get("ckpt_path"):  # refuse an unsafe or unreadable file before anything starts
            read_checkpoint(cfg.ckpt_path, trust=trust)
        with ddp_relaunch_in_place(trainer):
            trainer.fit(
                classifier,
                datamodule=datamodule,
                ckpt_path=cfg.get("ckpt_path"),
                weights_only=not trust,
            )
            fields.update(
                best_model_path=_best_path(checkpointing), last_model_path=_last_path(checkpointing)
            )
            if trainer.interrupted:
                fields["status"] = "interrupted"
            else:
                if cfg.get("test", True):
                    fields.update(
                        test_best_checkpoint(
                            trainer, classifier, datamodule, fields["best_model_path"]
                        )
                    )
                stopped = early_stopping is not None and early_stopping.stopped_epoch > 0
                fields["status"] = "stopped_early" if stopped else "completed"
    except SIGTERMException:
        fields["status"] = "interrupted"
        raise SystemExit(143) from None  # 128 + SIGTERM, as schedulers expect of a terminated job
    except (KeyboardInterrupt, SystemExit):
        fields["status"] = "interrupted"
        raise
    except BaseException as error:
        fields["error"] = user_error_message(error) or f"{type(error).__name__}: {error}"
        raise
    finally:
        fields.setdefault("params", None)
        fields.setdefault("test_acc", None)
        fields.setdefault("best_model_path", _best_path(checkpointing))
        fields.setdefault("last_model_path", _last_path(checkpointing))
        fields["epochs_run"] = trainer.current_epoch if trainer is not None else 0
        fields["split"] = (
            datamodule.split_record() if isinstance(datamodule, CIFAR10DataModule) else {}
        )
        if rank_zero_only.rank == 0:
            fields = summary_callback.write(fields)
            log_hparams_with_results(loggers, cfg, fields)
    return fields


register_resolvers()


@hydra.main(version_base=VERSION_BASE, config_path=CONFIG_PATH, config_name="train")
@exit_on_user_error
def main(cfg: DictConfig) -> float:
    """The Hydra app: train, and return the best val accuracy (NaN if none) for sweepers."""
    best = train(cfg).get("best_val_acc")
    return float("nan") if best is None else float(best)


def cli() -> None:
    """Console entry point `cvexp-train`: `resume=RUN_DIR` becomes that run's command line first."""
    try:
        sys.argv = resume_argv(sys.argv)
    except UserError as error:
        print(f"cvexp-train: error: {error}", file=sys.stderr)
        sys.exit(2)
    main()


if __name__ == "__main__":
    cli()
