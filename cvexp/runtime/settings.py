"""Settings that Lightning, torch or the file system would reject deep inside a run, checked first.

`check_settings` runs before a run directory is claimed (RunDirectory) and again at the start
of a sweep job, so a value that cannot work ends in one sentence that names the key, not in a
traceback from a library and a half-written run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cvexp.errors import UserError


def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=None, throw_on_missing=False)


def check_settings(cfg: DictConfig) -> None:
    """Raise UserError for the first setting that cannot work; keys a command lacks are skipped."""
    max_epochs = _get(cfg, "trainer.max_epochs")
    if isinstance(max_epochs, int) and (max_epochs == 0 or max_epochs < -1):
        raise UserError(
            f"trainer.max_epochs={max_epochs} trains nothing; pass a number of epochs of 1 or "
            "more (or -1 for no limit)."
        )
    for stage, why in (
        ("train", "trains nothing"),
        ("val", "leaves nothing to choose the best checkpoint and stop early with"),
    ):
        limit = _get(cfg, f"trainer.limit_{stage}_batches")
        if isinstance(limit, (int, float)) and not isinstance(limit, bool) and limit <= 0:
            raise UserError(
                f"trainer.limit_{stage}_batches={limit} {why}; pass a number of batches of 1 or "
                "more, a fraction in (0, 1], or null for all."
            )
    lr = _get(cfg, "model.optimizer.lr")
    if isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr <= 0:
        raise UserError(f"model.optimizer.lr={lr} cannot train; pass a positive learning rate.")
    batch_size = _get(cfg, "data.batch_size")
    if isinstance(batch_size, int) and batch_size < 1:
        raise UserError(f"data.batch_size={batch_size} is not a batch; pass 1 or more.")
    root = _get(cfg, "data.root")
    if isinstance(root, str) and Path(root).expanduser().is_file():
        raise UserError(
            f"data.root={root} is a file; pass the folder that holds CIFAR-10 (or its archive), "
            "or set CVEXP_DATA to that folder."
        )
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
