"""Small callbacks that tests add to real runs through config overrides."""

from __future__ import annotations

import os
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback


class StopAfterEpochs(Callback):
    """Stop the fit after `epochs` epochs, as a crash or a time limit would, with last.ckpt saved."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


class PauseForSignal(Callback):
    """At global step `step`, touch `marker` and wait there until a signal stops the fit.

    Tests send the signal from outside at a known point. A requeued SLURM job (SLURM_RESTART_COUNT
    above 0) runs the same command line and does not wait again.
    """

    def __init__(self, step: int, marker: str, timeout_s: float = 120.0) -> None:
        self.step, self.marker, self.timeout_s = step, Path(marker), timeout_s

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.global_step != self.step or int(os.environ.get("SLURM_RESTART_COUNT", "0")):
            return
        self.marker.touch()
        deadline = time.monotonic() + self.timeout_s
        while not trainer.received_sigterm and time.monotonic() < deadline:
            time.sleep(0.05)
