"""AtomicCheckpointIO: a checkpoint is written under a temporary name and renamed into place."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO

from cvexp.errors import UserError


class AtomicCheckpointIO(TorchCheckpointIO):
    """A crash or kill during the write leaves the previous checkpoint (e.g. last.ckpt) intact."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        path = Path(path)
        partial = path.with_name(f".{path.name}.partial")
        try:
            super().save_checkpoint(checkpoint, partial, storage_options)
            os.replace(partial, path)
        except OSError as err:  # disk full, quota, file size limit, read-only folder
            reason = os.strerror(err.errno) if err.errno else str(err)
            raise UserError(
                f"Could not write the checkpoint {path} ({reason}); the checkpoints already "
                "there are unchanged. Free disk space (or write runs elsewhere with "
                "hydra.run.dir=...) and continue with resume=<run dir>."
            ) from None
        finally:
            if partial.exists():
                partial.unlink()
