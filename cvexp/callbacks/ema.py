"""WeightEMA: an exponential moving average of the weights, which validation, checkpoints and the
test use; Lightning's EMAWeightAveraging with fixes for how cvexp-train runs it, and a start."""

from __future__ import annotations

import itertools
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.trainer.states import TrainerFn

from cvexp.errors import UserError


class WeightEMA(EMAWeightAveraging):
    """After every optimiser step, average <- decay * average + (1 - decay) * weights (buffers too,
    so BN statistics follow). Validation runs on the average, so `val/acc`, early stopping and the
    best checkpoint judge it; every checkpoint's `state_dict` holds the average (the raw weights
    are in `current_model_state`, for resuming), so the test after fit, cvexp-eval, -predict,
    -visualize and -export all use it. The average spans about 1 / (1 - decay) steps.

    The average starts at the first optimiser step that is both at `update_starting_at_step`
    (a 0-based step index) or later and in epoch `update_starting_at_epoch` (0-based) or later
    (null: no such condition). Until then the average follows the weights step by step, so
    validation and checkpoints see the live weights; from the start it averages, beginning with
    a copy of the weights it starts from.

    What differs from Lightning's callback:
    - the start holds back every update: Lightning's `update_starting_at_epoch` alone does not
      hold back the per-step updates (it adds one at the end of each epoch from that epoch on,
      which this callback never makes), and Lightning's average keeps the initial weights
      until its start instead of following the live ones;
    - the average lives on the training device (Lightning's would stay on the CPU, because the
      callback's setup runs before the model is moved, and copy every step across);
    - a checkpoint loaded outside fit (the test of the best checkpoint) is left as saved, so the
      test gets the averaged weights, not the raw ones from `current_model_state`;
    - the raw weights come back at `on_validation_end`, after every callback's and the module's
      validation-epoch-end hook, so figures drawn there show the weights that were validated.
    """

    def __init__(
        self,
        *,
        decay: float = 0.999,
        update_every_n_steps: int = 1,
        update_starting_at_step: int | None = None,
        update_starting_at_epoch: int | None = None,
    ) -> None:
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 < decay < 1:
            raise UserError(
                f"callbacks.ema.decay={decay} is not an averaging rate; pass a number between 0 "
                "and 1, e.g. 0.999 (an average over about 1000 steps)."
            )
        if (
            isinstance(update_every_n_steps, bool)
            or not isinstance(update_every_n_steps, int)
            or (update_every_n_steps < 1)
        ):
            raise UserError(
                f"callbacks.ema.update_every_n_steps={update_every_n_steps} never updates the "
                "average; pass 1 or more."
            )
        for key, value, unit in (
            ("update_starting_at_step", update_starting_at_step, "an optimiser step"),
            ("update_starting_at_epoch", update_starting_at_epoch, "an epoch"),
        ):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 0
            ):
                raise UserError(
                    f"callbacks.ema.{key}={value} is not {unit} to start from; pass 0 or more "
                    "(0 or null: average from the first step)."
                )
        super().__init__(
            decay=float(decay),
            update_every_n_steps=update_every_n_steps,
            update_starting_at_step=update_starting_at_step,
            update_starting_at_epoch=update_starting_at_epoch,
        )
        self.decay = float(decay)
        self._holds_average = False  # the module holds the average (from validation start to end)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and self._device is None:
            self._device = trainer.strategy.root_device
        super().setup(trainer, pl_module, stage)

    def started(self, trainer: L.Trainer) -> bool:
        """Whether the optimiser step just taken is at or after the start (step and epoch)."""
        step, epoch = self.update_starting_at_step, self.update_starting_at_epoch
        return (step is None or trainer.global_step - 1 >= step) and (
            epoch is None or trainer.current_epoch >= epoch
        )

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        """Per optimiser step only (every `update_every_n_steps` from the start step), never
        again at an epoch's end; the epoch condition is in `started`."""
        return step_idx is not None and super().should_update(step_idx=step_idx)

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self.started(trainer):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        elif trainer.global_step > self._latest_update_step:  # an optimiser step was taken
            # before the start the average is the live weights; its count of averages stays 0,
            # so the first update after the start copies the weights and averages from there
            self._follow(pl_module)
            self._latest_update_step = trainer.global_step

    @torch.no_grad()
    def _follow(self, pl_module: L.LightningModule) -> None:
        """Copy the module's parameters and buffers into the average."""
        assert self._average_model is not None
        module = self._average_model.module
        average = itertools.chain(module.parameters(), module.buffers())
        current = itertools.chain(pl_module.parameters(), pl_module.buffers())
        for average_tensor, current_tensor in zip(average, current, strict=True):
            average_tensor.copy_(current_tensor)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_epoch_start(trainer, pl_module)
        self._holds_average = self._average_model is not None

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The averaged weights stay in place until on_validation_end."""

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # ModelCheckpoint saves in this hook too; Lightning runs checkpoint callbacks last, so the
        # module holds the raw weights again when it does, as on_save_checkpoint expects
        self._swap_back(pl_module)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._swap_back(pl_module)  # an interrupt during validation: the raw weights come back

    def _swap_back(self, pl_module: L.LightningModule) -> None:
        if self._average_model is not None and self._holds_average:
            self._swap_models(pl_module)
        self._holds_average = False

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if self._holds_average and "current_model_state" in checkpoint:
            # saved during validation (an interrupt's checkpoint before on_exception swapped
            # back): the module held the average and the averaged model the raw weights
            checkpoint["state_dict"], checkpoint["current_model_state"] = (
                checkpoint["current_model_state"],
                checkpoint["state_dict"],
            )

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            return  # state_dict already holds the averaged weights: test with them
        super().on_load_checkpoint(trainer, pl_module, checkpoint)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":  # the average has been copied into the module at on_train_end
            self._average_model = None
