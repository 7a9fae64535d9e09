"""Lightning's DDP re-launch inside Hydra: the other ranks start in this job's own directory."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from omegaconf import read_write

DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


@contextmanager
def ddp_relaunch_in_place(trainer: L.Trainer) -> Iterator[None]:
    """Let Lightning's DDP launcher start the other ranks in this job's own directory.

    Lightning starts each extra rank as this process's command line (`sys.argv`) plus
    `hydra.run.dir=<run.dir>`. For a single run we pin run.dir to the directory Hydra
    already made (and that RunDirectory claimed), so the ranks never claim another. In a sweep the
    command line still holds `-m` and the sweep lists, so each rank would run the whole sweep
    in the wrong place: for the length of the job we replace it by this job's own overrides
    (a single run) and point run.dir at the job's directory. We chose this over a spawn-based
    strategy because it keeps Lightning's default, fastest DDP path, and over torchrun because
    it needs no outside launcher. A sweep job that a launcher plugin runs in a process of its
    own (submitit's `python -m submitit.core._submit FOLDER`) starts its ranks as
    `python -m cvexp.cli.train` too, never as that launcher's command. Afterwards the DDP
    environment is cleared, so that the sweep's next job launches its own ranks instead of
    believing it is one.
    """
    launches = isinstance(getattr(trainer.strategy, "launcher", None), _SubprocessScriptLauncher)
    parent = launches and "LOCAL_RANK" not in os.environ and HydraConfig.initialized()
    if not parent:
        yield
        return
    hydra_cfg = HydraConfig.get()
    saved_argv = sys.argv[:]
    with read_write(hydra_cfg.run):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
    import __main__

    saved_spec = getattr(__main__, "__spec__", None)
    if hydra_cfg.mode == RunMode.MULTIRUN:
        own = (
            "hydra.sweep.",
            "hydra.mode=",
            "hydra.run.dir=",
            "hydra/launcher=",
            "hydra.launcher.",
        )
        kept = [o for o in hydra_cfg.overrides.hydra if not o.startswith(own)]  # e.g. a search path
        sys.argv = [sys.argv[0], *kept, *hydra_cfg.overrides.task]
        if saved_spec is not None and saved_spec.name != "cvexp.cli.train":
            # Lightning starts `python -m <__main__'s module>`: make that module cvexp.cli.train
            __main__.__spec__ = importlib.util.find_spec("cvexp.cli.train")
    try:
        yield
    finally:
        sys.argv = saved_argv
        __main__.__spec__ = saved_spec
        for name in DDP_ENV:
            os.environ.pop(name, None)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
