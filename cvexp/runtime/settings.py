"""Settings that Lightning, torch or the file system would reject deep inside a run, checked first.

`check_settings` runs before a run directory is claimed (RunDirectory) and again at the start
of a sweep job, so a value that cannot work ends in one sentence that names the key, not in a
traceback from a library and a half-written run. One small function per family of keys.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cvexp.errors import UserError

# CIFAR-10's classes, in every data format cvexp reads (len(cvexp.data.formats.CLASSES); a
# number here, so that checking the settings imports no torch)
CIFAR10_CLASSES = 10
# what lightning.seed_everything (numpy's legacy seeding) accepts: an unsigned 32-bit integer
MAX_SEED = 2**32 - 1
# learning-rate schedules that plan their length from the fit's total steps (see
# ImageClassifier.configure_optimizers): they need an end, in epochs or trainer.max_steps
PLANNED_SCHEDULES = ("torch.optim.lr_scheduler.OneCycleLR", "cvexp.schedules.warmup_cosine")
# the test-time augmentations `tta` may name (cvexp.classifier.TTA_MODES, which imports torch)
TTA_MODES = ("flip",)
# torch.compile's modes (cvexp.classifier.COMPILE_MODES, which imports torch)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=None, throw_on_missing=False)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _shown(value: Any) -> str:
    """A value as it is written on the command line (null, true), for a message."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return str(value)


def check_settings(cfg: DictConfig) -> None:
    """Raise UserError for the first setting that cannot work; keys a command lacks are skipped."""
    _check_epochs(cfg)
    _check_batch_limits(cfg)
    _check_seed(cfg)
    _check_model(cfg)
    _check_data(cfg)
    _check_folds(cfg)
    _check_reporting(cfg)
    _check_tta(cfg)


def _check_epochs(cfg: DictConfig) -> None:
    """trainer.max_epochs: 1 or more, or -1 (no limit); trainer.min_epochs: 0 or more."""
    max_epochs = _get(cfg, "trainer.max_epochs")
    if max_epochs is not None and (not _is_int(max_epochs) or max_epochs < -1):
        raise UserError(
            f"trainer.max_epochs={_shown(max_epochs)} is not a number of epochs; pass a whole "
            "number of 1 or more (or -1 for no limit), e.g. trainer.max_epochs=30."
        )
    if max_epochs == 0:
        raise UserError(
            "trainer.max_epochs=0 trains nothing; pass a number of epochs of 1 or more (or -1 "
            "for no limit)."
        )
    min_epochs = _get(cfg, "trainer.min_epochs")
    if min_epochs is not None and (not _is_int(min_epochs) or min_epochs < 0):
        raise UserError(
            f"trainer.min_epochs={_shown(min_epochs)} is not a number of epochs; pass a whole "
            "number of 0 or more, e.g. trainer.min_epochs=1."
        )
    max_steps = _get(cfg, "trainer.max_steps")
    scheduler = _get(cfg, "model.scheduler._target_")
    if max_epochs == -1 and max_steps in (None, -1) and scheduler in PLANNED_SCHEDULES:
        raise UserError(
            f"trainer.max_epochs=-1 (no limit) leaves the learning-rate schedule ({scheduler}) "
            "no length to plan; pass a number of epochs, e.g. trainer.max_epochs=60 (early "
            "stopping and trainer.max_time can still end the run sooner)."
        )


def _check_batch_limits(cfg: DictConfig) -> None:
    for stage, why in (
        ("train", "trains nothing"),
        ("val", "leaves nothing to choose the best checkpoint and stop early with"),
    ):
        limit = _get(cfg, f"trainer.limit_{stage}_batches")
        if _is_number(limit) and limit <= 0:
            raise UserError(
                f"trainer.limit_{stage}_batches={limit} {why}; pass a number of batches of 1 or "
                "more, a fraction in (0, 1], or null for all."
            )


def _check_seed(cfg: DictConfig) -> None:
    """seed: what lightning.seed_everything accepts (or null: not seeded) where a command trains
    (cvexp-attention seeds its own generator); data.seed: an int."""
    seed = _get(cfg, "seed")
    trains = _get(cfg, "model") is not None and _get(cfg, "trainer") is not None
    if trains and seed is not None and (not _is_int(seed) or not 0 <= seed <= MAX_SEED):
        raise UserError(
            f"seed={_shown(seed)} is not a seed; pass a whole number from 0 to {MAX_SEED}, "
            "e.g. seed=42."
        )
    data = _get(cfg, "data")
    data_seed = data.get("seed", 0) if isinstance(data, DictConfig) else 0
    if not _is_int(data_seed):
        raise UserError(
            f"data.seed={_shown(data_seed)} is not a seed for the validation split (it follows "
            "seed); pass a whole number, e.g. seed=42 or data.seed=42."
        )


def _check_model(cfg: DictConfig) -> None:
    """model.num_classes (and the net's own count): CIFAR-10's 10; model.optimizer.lr > 0."""
    for key in ("model.num_classes", "model.net.num_classes"):
        classes = _get(cfg, key)
        if classes is not None and (not _is_int(classes) or classes != CIFAR10_CLASSES):
            raise UserError(
                f"{key}={_shown(classes)} does not fit CIFAR-10, whose labels are its "
                f"{CIFAR10_CLASSES} classes; pass {key}={CIFAR10_CLASSES} (or leave the key out)."
            )
    lr = _get(cfg, "model.optimizer.lr")
    if lr is not None and (not _is_number(lr) or not math.isfinite(lr) or lr <= 0):
        raise UserError(
            f"model.optimizer.lr={_shown(lr)} cannot train; pass a positive, finite learning "
            "rate, e.g. model.optimizer.lr=0.1."
        )
    mode = _get(cfg, "model.compile_mode")
    if mode is not None and mode not in COMPILE_MODES:
        raise UserError(
            f"model.compile_mode={_shown(mode)} is not a torch.compile mode; pass one of "
            f"{', '.join(COMPILE_MODES)}, or null for torch's default."
        )
    if mode is not None and _get(cfg, "model.compile") is not True:
        raise UserError(
            f"model.compile_mode={mode} needs model.compile=true; pass both, or "
            "model.compile_mode=null."
        )


def _check_data(cfg: DictConfig) -> None:
    batch_size = _get(cfg, "data.batch_size")
    if _is_int(batch_size) and batch_size < 1:
        raise UserError(f"data.batch_size={batch_size} is not a batch; pass 1 or more.")
    root = _get(cfg, "data.root")
    if isinstance(root, str) and Path(root).expanduser().is_file():
        raise UserError(
            f"data.root={root} is a file; pass the folder that holds CIFAR-10 (or its archive), "
            "or set CVEXP_DATA to that folder."
        )
    for key in ("data.mixup_alpha", "data.cutmix_alpha"):
        alpha = _get(cfg, key)
        if alpha is not None and (not _is_number(alpha) or not math.isfinite(alpha) or alpha <= 0):
            raise UserError(
                f"{key}={_shown(alpha)} is not a Beta distribution's alpha; pass a positive, "
                f"finite number (e.g. {key}=1.0), or {key}=null to switch it off."
            )


def _check_folds(cfg: DictConfig) -> None:
    """data.folds: null or 2 or more; data.fold: 0 to folds-1 (0 without folds). The same
    sentences as the DataModule's, which also refuses more folds than the smallest class has
    images (it needs the data to know)."""
    folds, fold = _get(cfg, "data.folds"), _get(cfg, "data.fold")
    if folds is None:
        if fold not in (0, None):
            raise UserError(
                f"data.fold={_shown(fold)} picks a cross-validation fold, but data.folds is null; "
                "pass the number of folds too (e.g. data.folds=5), or leave data.fold out."
            )
        return
    if not _is_int(folds) or folds < 2:
        raise UserError(
            f"data.folds={_shown(folds)} is not a number of cross-validation folds; pass 2 or "
            "more (e.g. data.folds=5), or data.folds=null for the data.val_size split."
        )
    if not _is_int(fold) or not 0 <= fold < folds:
        raise UserError(
            f"data.fold={_shown(fold)} is not one of the {folds} folds; pass data.fold from 0 to "
            f"{folds - 1}."
        )


def _check_reporting(cfg: DictConfig) -> None:
    """The keys that label and rank runs, and visualize's top_k."""
    mode = _get(cfg, "optimized_mode")
    if mode is not None and mode not in ("min", "max"):
        raise UserError(
            f"optimized_mode={mode} is not a direction; pass optimized_mode=max (higher is better) "
            "or optimized_mode=min."
        )
    metric = _get(cfg, "optimized_metric")
    if metric is not None and (not isinstance(metric, str) or not metric.strip()):
        raise UserError(
            f"optimized_metric={metric} is not a metric name; pass a logged metric, e.g. "
            "optimized_metric=val/loss."
        )
    tags = _get(cfg, "tags")
    if tags is not None and not OmegaConf.is_list(tags):
        raise UserError(f"tags={tags} is not a list; pass tags=[word,...], e.g. tags=[baseline].")
    top_k = _get(cfg, "top_k")
    if isinstance(top_k, int) and top_k < 1:
        raise UserError(f"top_k={top_k} is not valid: it would show nothing; pass top_k=1 or more.")


def _check_tta(cfg: DictConfig) -> None:
    """tta (cvexp-train's final test, cvexp-eval): null (the plain test only) or flip."""
    tta = _get(cfg, "tta")
    if tta is not None and tta not in TTA_MODES:
        raise UserError(
            f"tta={_shown(tta)} is not a test-time augmentation cvexp has; pass tta=flip (each "
            "test image and its horizontal flip) or tta=null for the plain test only."
        )
