"""RelocatableCheckpoint: checkpointing whose saved paths follow a run directory that moved."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

PATH_KEYS = ("dirpath", "best_model_path", "kth_best_model_path", "last_model_path")


def relocated(state: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """`state` with every path under the folder `old` moved under `new`."""

    def move(path: Any) -> Any:
        if not isinstance(path, str) or not path:
            return path
        try:
            return str(Path(new) / Path(path).relative_to(old))
        except ValueError:  # a path outside the old folder stays as it is
            return path

    moved = {k: move(v) if k in PATH_KEYS else v for k, v in state.items()}
    if isinstance(state.get("best_k_models"), dict):
        moved["best_k_models"] = {move(k): v for k, v in state["best_k_models"].items()}
    return moved


class RelocatableCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, with two differences.

    A run directory that was copied or moved resumes against its own files: the state saved
    in a checkpoint (the best and last paths, the top-k) is moved from the folder it was
    written in to this run's `dirpath` before it is loaded, when the files are there.
    (Lightning alone would keep pointing at the old location, and test the original run's
    checkpoint.) A new run started with `ckpt_path=` from another run keeps that run's best
    path until it saves a better one of its own.

    `last.ckpt` is written at the end of every epoch. Lightning 2.6 writes it only in an
    epoch that also saved a top-k checkpoint, so after an epoch that did not improve, a
    killed run would resume from its last best epoch and train the epochs after it again.
    """

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_not_saved(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_not_saved(trainer)

    def _save_last_if_not_saved(self, trainer: L.Trainer) -> None:
        # skipped also when this step was saved already (by the top-k save, with last.ckpt)
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old = state_dict.get("dirpath")
        if old and self.dirpath and Path(old) != Path(self.dirpath):
            moved = relocated(state_dict, str(old), str(self.dirpath))
            # only a run whose files came along (a copied or moved run directory); a new run
            # started with ckpt_path= from another run keeps pointing at that run's files
            if any(
                moved.get(key)
                and moved.get(key) != state_dict.get(key)
                and Path(moved[key]).is_file()
                for key in ("best_model_path", "last_model_path")
            ):
                state_dict = moved
        super().load_state_dict(state_dict)
