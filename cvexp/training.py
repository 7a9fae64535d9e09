"""Training a classifier: fit on the train split, early-stop on the val split, test the best checkpoint.

`train(cfg)` is what `cvexp-train` runs (cvexp/cli/train.py), and what a Python user calls with a
composed config (`cvexp.runtime.config.compose_config`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from cvexp.callbacks import InterruptCheckpoint, RunSummary
from cvexp.checkpoint import (
    check_checkpoint_fits,
    check_optimizer_fits,
    check_train_on,
    load_net_weights,
    read_checkpoint,
)
from cvexp.classifier import build_classifier
from cvexp.run_record import FINISHED, objective
from cvexp.runtime.continuation import (
    FRESH,
    Continuation,
    How,
    decide,
    pin_for_other_ranks,
    restore_history,
)
from cvexp.runtime.ddp import ddp_relaunch_in_place
from cvexp.runtime.hydra_app import log_lightning_to_run_file
from cvexp.runtime.settings import check_settings
from cvexp.trainer import build_trainer

log = logging.getLogger(__name__)


def train_job(cfg: DictConfig) -> float:
    """One run or sweep job, as `cvexp-train` runs it: decide how it starts (fresh, resumed,
    skipped because it finished, or continued after an interruption), train, and return the
    best `optimized_metric` (NaN if none) for sweepers."""
    metric = cfg.get("optimized_metric", "val/acc")
    continuation = decide(cfg)
    if continuation.how is How.SKIP_FINISHED:
        log.info("skipping %s: it finished before (skip_completed=true)", cfg.paths.output_dir)
        return objective(continuation.earlier or {}, metric)
    if continuation.how is How.CONTINUE_INTERRUPTED:
        log.info("continuing the interrupted job from %s", continuation.ckpt_path)
        pin_for_other_ranks(continuation)
    try:
        return objective(train(cfg, continuation), metric)
    except SIGTERMException:
        raise SystemExit(143) from None  # 128 + SIGTERM, as schedulers expect of a terminated job


def train(cfg: DictConfig, continuation: Continuation = FRESH) -> dict[str, Any]:
    """Fit, then test the best checkpoint on the official test set; returns the run's summary.

    `continuation` says whether the fit continues a run from its last.ckpt (see
    runtime/continuation.py); otherwise `cfg.ckpt_path`, when set, starts it from that
    checkpoint. summary.json is written in every case (see RunSummary), also when the run
    fails before training starts.
    """
    ckpt_path = continuation.ckpt_path or cfg.get("ckpt_path")
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
        if (
            cfg.get("init_from") and continuation.how is How.FRESH
        ):  # the weights only: a fresh optimiser, schedule and epoch
            summary.record["init_from"] = load_net_weights(
                classifier.net, cfg.init_from, strict=cfg.get("init_from_strict", True), trust=trust
            )
        trainer = build_trainer(cfg, [summary, InterruptCheckpoint()])
        datamodule.per_device_batch_size(trainer.world_size)  # fail before any process starts
        if ckpt_path:  # refuse an unsafe, foreign or finished checkpoint before starting
            checkpoint = read_checkpoint(ckpt_path, trust=trust)
            check_checkpoint_fits(classifier.net, checkpoint, ckpt_path)
            check_optimizer_fits(classifier, checkpoint, ckpt_path)
            check_train_on(checkpoint, trainer.max_epochs)

        with ddp_relaunch_in_place(trainer):
            trainer.fit(classifier, datamodule, ckpt_path=ckpt_path, weights_only=not trust)
            if cfg.get("test", True) and not trainer.interrupted:
                best = trainer.checkpoint_callback and trainer.checkpoint_callback.best_model_path
                classifier.set_tta(cfg.get("tta"))  # test/acc_tta beside test/acc, if any
                trainer.test(classifier, datamodule, ckpt_path=best or None, weights_only=True)
    return summary.summary


@contextmanager
def summary_on_failure(summary: RunSummary) -> Iterator[None]:
    """Write a failed (or interrupted) summary.json for errors raised outside the Trainer's hooks."""
    try:
        yield
    except BaseException as error:
        summary.record_failure(error)
        if summary.previous is not None and summary.previous.get("status") in FINISHED:
            # a failed continuation of a finished run: its record stays as it was
            restore_history(summary.run)
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
