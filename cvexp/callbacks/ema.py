"""WeightEMA: an exponential moving average of the weights, which validation, checkpoints and the
test use; Lightning's EMAWeightAveraging with three fixes for how cvexp-train runs it."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.trainer.states import TrainerFn

from cvexp.errors import UserError


class WeightEMA(EMAWeightAveraging):
    """After every optimiser step, average <- decay * average + (1 - decay) * weights (buffers too,
    so BN statistics follow). Validation runs on the average, so `val/acc`, early stopping and the
    best checkpoint judge it; every checkpoint's `state_dict` holds the average (the raw weights
    are in `current_model_state`, for resuming), so the test after fit, cvexp-eval, -predict,
    -visualize and -export all use it. The average spans about 1 / (1 - decay) steps.

    What differs from Lightning's callback:
    - the average lives on the training device (Lightning's would stay on the CPU, because the
      callback's setup runs before the model is moved, and copy every step across);
    - a checkpoint loaded outside fit (the test of the best checkpoint) is left as saved, so the
      test gets the averaged weights, not the raw ones from `current_model_state`;
    - the raw weights come back at `on_validation_end`, after every callback's and the module's
      validation-epoch-end hook, so figures drawn there show the weights that were validated.
    """

    def __init__(self, *, decay: float = 0.999, update_every_n_steps: int = 1) -> None:
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
        super().__init__(decay=float(decay), update_every_n_steps=update_every_n_steps)
        self.decay = float(decay)
        self._holds_average = False  # the module holds the average (from validation start to end)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and self._device is None:
            self._device = trainer.strategy.root_device
        super().setup(trainer, pl_module, stage)

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
