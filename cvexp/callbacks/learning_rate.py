"""LearningRateLogger: the learning rate (and momentum) under the plain tags `lr` and `momentum`."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback


class LearningRateLogger(Callback):
    """Logs the first parameter group's learning rate every `every_n_steps` optimiser steps.

    Lightning's LearningRateMonitor names the tag after the optimiser and splits it per
    parameter group (`lr-SGD/pg1`, ...); our groups differ only in weight decay, so one
    `lr` tag is the truth, and it is what the run contract names.
    """

    def __init__(self, every_n_steps: int = 1, log_momentum: bool = True) -> None:
        self.every_n_steps, self.log_momentum = every_n_steps, log_momentum

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step % self.every_n_steps or not trainer.optimizers:
            return
        group = trainer.optimizers[0].param_groups[0]
        pl_module.log("lr", float(group["lr"]), on_step=True, on_epoch=False)
        momentum = group.get("momentum", group.get("betas", (None,))[0])
        if self.log_momentum and momentum is not None:
            pl_module.log("momentum", float(momentum), on_step=True, on_epoch=False)
