"""AtomicCheckpointIO: a checkpoint is written under a temporary name and renamed into place."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO


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
        finally:
            if partial.exists():
                partial.unlink()
