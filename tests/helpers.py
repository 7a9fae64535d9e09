"""Small callbacks that tests add to real runs through config overrides."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback


class StopAfterEpochs(Callback):
    """Stop the fit after `epochs` epochs, as a crash or a time limit would, with last.ckpt saved."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True
