"""What every Hydra entry point shares: the config location, the values resolvers compute, logging."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from cvexp.run_record import CHECKPOINTS

# conf/ is installed as the package cvexp.conf (see pyproject.toml), so it is found from
# any working directory, after both editable and regular installs.
CONFIG_PATH = "pkg://cvexp.conf"
VERSION_BASE = "1.3"


def path_safe(text: str, max_length: int = 120) -> str:
    """`text` usable as one directory name.

    Characters other than letters, digits and '._-+' become '_' (so '/', '=' and ',', which
    Hydra's override grammar or the file system would trip over, never appear); a name longer
    than `max_length` is cut and ends with a hash of the whole, so it stays unique.
    """
    safe = "".join(c if c.isalnum() or c in "._-+" else "_" for c in str(text)) or "default"
    if len(safe) > max_length:
        safe = f"{safe[: max_length - 9]}-{hashlib.sha1(safe.encode()).hexdigest()[:8]}"
    return safe


def default_data_root() -> str:
    """`data.root`'s default: CVEXP_DATA when set and not empty, else ./data."""
    return os.environ.get("CVEXP_DATA", "").strip() or "./data"


def checkpoint_name(ckpt_path: str | None) -> str:
    """A folder name for a checkpoint's outputs: its run's folder name and its own stem."""
    if not ckpt_path:
        return "no_checkpoint"
    path = Path(str(ckpt_path))
    run = path.parent.parent.name if path.parent.name == CHECKPOINTS else path.parent.name
    return path_safe(f"{run}_{path.stem}" if run else path.stem)


def fast_precision(accelerator: str = "auto") -> str:
    """The precision of the CPU presets for `trainer.accelerator`: on a GPU `bf16-mixed`, as
    trainer=gpu; on a CPU `bf16-mixed` only where it computes bf16 natively (AVX512-BF16 or
    AMX), else `32-true`.

    On such a CPU bf16 autocast trains the quarter-width VGG16 about 1.5 times faster (see
    docs/benchmarks.md); elsewhere (most laptops) bf16 is emulated and slower than float32.
    """
    import torch  # here, not at the top: the commands start without torch

    from cvexp.runtime.hardware import cpu_computes_bf16  # imports torch too

    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return "bf16-mixed"
    return "bf16-mixed" if cpu_computes_bf16() else "32-true"


def log_lightning_to_run_file() -> None:
    """Lightning's console messages once on the console and once in the run's `train.log`.

    Imported before Hydra configures logging (root without handlers), Lightning's loggers
    print to stderr themselves and do not propagate, so Hydra's file handler never sees them:
    it is added to them (once). Imported after (as the commands do now, for a fast start),
    they propagate to Hydra's handlers, and only the `lightning` logger's own console handler
    is removed, which would print every message a second time.
    """
    root = logging.getLogger()
    files = [h for h in root.handlers if isinstance(h, logging.FileHandler)]
    if root.handlers:
        top = logging.getLogger("lightning")
        for handler in top.handlers[:]:
            if type(handler) is logging.StreamHandler:  # its own "INFO: ..." console copy
                top.removeHandler(handler)
    for name in ("lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in logger.handlers[:]:  # an earlier sweep job's file
            if isinstance(handler, logging.FileHandler) and handler not in files:
                logger.removeHandler(handler)
        if logger.propagate:
            continue  # root's handlers, Hydra's file included, get its messages
        for handler in files:
            if handler not in logger.handlers:
                logger.addHandler(handler)


def in_multirun() -> bool:
    """Whether this process runs a job of a Hydra sweep (-m)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
