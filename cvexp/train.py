"""cvexp-train: fit on the train split, early-stop on the val split, test the best checkpoint."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from cvexp.callbacks import InterruptCheckpoint, RunSummary
from cvexp.checkpoint import check_checkpoint_fits, load_net_weights, read_checkpoint
from cvexp.classifier import build_classifier
from cvexp.runtime.ddp import ddp_relaunch_in_place
from cvexp.errors import UserError
from cvexp.runtime.exit import exit_on_user_error
from cvexp.runtime.hydra_app import (
    CONFIG_PATH,
    VERSION_BASE,
    log_lightning_to_run_file,
    register_resolvers,
)
from cvexp.runtime.resume import check_train_on, restore_hydra_record, resume_argv
from cvexp.runtime.settings import check_settings
from cvexp.runtime.sweep_resume import continue_interrupted, earlier_result, objective
from cvexp.runtime.trainer import build_trainer

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, then test the best checkpoint on the official test set; returns the run's summary.

    summary.json is written in every case (see RunSummary), also when the run fails
    before training starts.
    """
    summary = RunSummary(
        cfg.paths.output_dir,
        fields={
            **run_choices(),
            "seed": cfg.get("seed"),
            "run_dir": str(cfg.paths.output_dir),
            "tags": [str(tag) for tag in cfg.get("tags") or []],
        },
        hparams=hparams_for_tensorboard(cfg),
        test_after_fit=bool(cfg.get("test", True)),
        optimized=(cfg.get("optimized_metric", "val/acc"), cfg.get("optimized_mode", "max")),
    )
    log_lightning_to_run_file()
    with summary_on_failure(summary):
        check_settings(cfg)  # a sweep job's own values (single runs were checked before)
        if cfg.get("seed") is not None:
            L.seed_everything(cfg.seed, workers=True)
        trust = bool(cfg.get("trust_checkpoint", False))
        datamodule = instantiate(cfg.data)
        classifier = build_classifier(cfg.model)
        if cfg.get("init_from"):  # the weights only: a fresh optimiser, schedule and epoch
            summary.record["init_from"] = load_net_weights(
                classifier.net, cfg.init_from, strict=cfg.get("init_from_strict", True), trust=trust
            )
        trainer = build_trainer(cfg, [summary, InterruptCheckpoint()])
        datamodule.per_device_batch_size(trainer.world_size)  # fail before any process starts
        if cfg.get("ckpt_path"):  # refuse an unsafe, foreign or finished checkpoint before starting
            checkpoint = read_checkpoint(cfg.ckpt_path, trust=trust)
            check_checkpoint_fits(classifier.net, checkpoint, cfg.ckpt_path)
            check_train_on(checkpoint, trainer.max_epochs)

        with ddp_relaunch_in_place(trainer):
            trainer.fit(
                classifier, datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=not trust
            )
            if cfg.get("test", True) and not trainer.interrupted:
                best = trainer.checkpoint_callback and trainer.checkpoint_callback.best_model_path
                trainer.test(classifier, datamodule, ckpt_path=best or None, weights_only=True)
    return summary.summary


@contextmanager
def summary_on_failure(summary: RunSummary) -> Iterator[None]:
    """Write a failed (or interrupted) summary.json for errors raised outside the Trainer's hooks."""
    try:
        yield
    except BaseException as error:
        summary.record_failure(error)
        if summary.previous is not None:  # a failed resume: the run's record stays as it was
            restore_hydra_record(summary.path.parent)
        raise


def run_choices() -> dict[str, Any]:
    """The model choice and the command-line overrides of this run, when Hydra made it."""
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
        "tags": ",".join(str(tag) for tag in cfg.get("tags") or []),
    }


register_resolvers()


@hydra.main(version_base=VERSION_BASE, config_path=CONFIG_PATH, config_name="train")
@exit_on_user_error
def main(cfg: DictConfig) -> float:
    """The Hydra app: train, and return the best `optimized_metric` (NaN if none) for sweepers.

    With `skip_completed=true`, a sweep job that finished before returns its recorded result, and
    one that was interrupted continues from its last.ckpt (see runtime/sweep_resume.py).
    """
    metric = cfg.get("optimized_metric", "val/acc")
    earlier = earlier_result(cfg)
    if earlier is not None:
        log.info("skipping %s: it finished before (skip_completed=true)", cfg.paths.output_dir)
        return objective(earlier, metric)
    if continue_interrupted(cfg):
        log.info("continuing the interrupted job from %s", cfg.ckpt_path)
    try:
        return objective(train(cfg), metric)
    except SIGTERMException:
        raise SystemExit(143) from None  # 128 + SIGTERM, as schedulers expect of a terminated job


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
