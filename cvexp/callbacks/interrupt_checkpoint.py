"""InterruptCheckpoint: on SIGTERM or Ctrl+C, save last.ckpt before the run exits."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException


class InterruptCheckpoint(Callback):
    """Writes `last.ckpt` (atomically, through the trainer's checkpoint IO) when a fit is interrupted.

    Lightning turns SIGTERM into SIGTERMException at the next batch, on every rank at once,
    and Ctrl+C into KeyboardInterrupt; both reach `on_exception`. `resume=RUN_DIR` continues
    from it; a run stopped mid-epoch starts that epoch's batches again from the start of its order.
    """

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if (
            not isinstance(exception, (SIGTERMException, KeyboardInterrupt))
            or trainer.state.fn != "fit"
        ):
            return
        checkpointing = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
        if checkpointing is None or checkpointing.dirpath is None or trainer.global_step == 0:
            return
        trainer.save_checkpoint(Path(checkpointing.dirpath) / "last.ckpt")
