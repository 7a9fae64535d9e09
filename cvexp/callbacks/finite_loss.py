"""FiniteLossGuard: stop a fit at the first NaN or infinite training loss, with a clear message."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from cvexp.errors import UserError


class FiniteLossGuard(Callback):
    """Fails the run with one sentence naming the epoch and step of the first non-finite loss.

    No GPU sync per step: the losses are kept on their device and checked together every
    `check_every_n_steps` steps, before every validation and at the end of every epoch, so
    a diverged model never reaches validation or a checkpoint. The best checkpoint saved
    before stays as it was.
    """

    def __init__(self, check_every_n_steps: int = 20) -> None:
        if check_every_n_steps < 1:
            raise ValueError(f"check_every_n_steps must be at least 1, got {check_every_n_steps}.")
        self.check_every_n_steps = check_every_n_steps
        self._pending: list[tuple[int, int, torch.Tensor]] = []  # (epoch, step, loss)

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            self._pending.append((trainer.current_epoch, trainer.global_step, loss.detach()))
        if len(self._pending) >= self.check_every_n_steps:
            self.check(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check(trainer)

    def check(self, trainer: L.Trainer) -> None:
        """Raise a UserError if any loss since the last check was NaN or infinite."""
        if not self._pending:
            return
        losses = torch.stack([loss.float() for *_, loss in self._pending])
        pending, self._pending = self._pending, []
        bad = (~torch.isfinite(losses)).nonzero()  # one sync for all the pending steps
        if len(bad) == 0:
            return
        epoch, step, loss = pending[int(bad[0])]
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None
        raise UserError(
            f"The training loss became {loss.item()} at epoch {epoch}, step {step}; the model "
            f"diverged, so the run stopped (the best checkpoint so far is kept): lower the "
            f"learning rate (model.optimizer.lr{f', now about {lr:.3g}' if lr else ''}) or "
            "clip gradients (trainer.gradient_clip_val=1.0)."
        )
