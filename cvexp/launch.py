"""Starting runs: resume a run in place, and make Lightning's DDP re-launch work inside Hydra."""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from omegaconf import read_write

from cvexp.errors import UserError

DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
RESUMED = "CVEXP_RESUME_APPLIED"


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _quoted(value: str | Path) -> str:
    """A path as a quoted Hydra override value, so '=' or ',' in it cannot break the grammar."""
    return f"'{value}'" if "'" not in str(value) else f'"{value}"'


def resume_argv(argv: list[str]) -> list[str]:
    """Rewrite `cvexp-train resume=RUN_DIR [overrides]` into the command that continues that run.

    The run's recorded overrides (`.hydra/overrides.yaml`) are composed again, the new ones
    applied on top (a new value for the same key wins), the output directory is the run's
    own, and the fit restarts from its `checkpoints/last.ckpt`: weights, optimiser, schedule,
    epoch, early-stopping and best-checkpoint state, RNG states, and the TensorBoard curves
    continue in the same folder. The run's earlier `.hydra/` record is kept under
    `.hydra/history/<time>/` before Hydra writes the new one.
    """
    values = [a.split("=", 1)[1] for a in argv[1:] if a.startswith("resume=")]
    if not values or os.environ.get(RESUMED) or values[-1] in ("", "null"):
        return argv
    if "-m" in argv or "--multirun" in argv:
        raise UserError(
            "resume= continues one run; drop -m (resume each job of a sweep on its own)."
        )
    run_dir = Path(values[-1]).expanduser().resolve()
    recorded = run_dir / ".hydra" / "overrides.yaml"
    if not recorded.is_file():
        raise UserError(
            f"{run_dir} is not a run directory (it has no .hydra/overrides.yaml); pass resume=<a run directory, "
            "such as outputs/<date>/<time>>."
        )
    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.is_file():
        raise UserError(
            f"{run_dir} has no checkpoints/last.ckpt to resume from; start a new run, or pass "
            "ckpt_path=<a checkpoint> to start one from it."
        )
    original = yaml.safe_load(recorded.read_text()) or []
    added = {_key(o) for o in original if o.startswith("+")}  # keys the run added with '+'
    # '++' sets a key that exists only because the run added it, now that its '+' override is dropped
    new = [f"++{a}" if _key(a) in added and not a.startswith(("+", "~")) else a for a in argv[1:]]
    new = [a for a in new if not a.startswith("resume=")]
    new_keys = {_key(a) for a in new}
    kept = [o for o in original if _key(o) not in new_keys | {"ckpt_path", "resume"}]
    history = run_dir / ".hydra" / "history" / time.strftime("%Y-%m-%d_%H-%M-%S")
    history.mkdir(parents=True, exist_ok=True)
    for file in (run_dir / ".hydra").glob("*.yaml"):
        shutil.copy2(file, history / file.name)
    os.environ[RESUMED] = "1"  # DDP children re-run this command line: do not rewrite it twice
    return [
        argv[0],
        *kept,
        *new,
        f"hydra.run.dir={_quoted(run_dir)}",
        f"ckpt_path={_quoted(last)}",
        f"resume={_quoted(run_dir)}",
    ]


@contextmanager
def ddp_relaunch_in_place(trainer: L.Trainer) -> Iterator[None]:
    """Let Lightning's DDP launcher start the other ranks in this job's own directory.

    Lightning starts each extra rank as this process's command line (`sys.argv`) plus
    `hydra.run.dir=<run.dir>`. For a single run we pin run.dir to the directory Hydra
    already made, so a resolver such as fresh_dir is never evaluated again. In a sweep the
    command line still holds `-m` and the sweep lists, so each rank would run the whole sweep
    in the wrong place: for the length of the job we replace it by this job's own overrides
    (a single run) and point run.dir at the job's directory. We chose this over a spawn-based
    strategy because it keeps Lightning's default, fastest DDP path, and over torchrun because
    it needs no outside launcher. Afterwards the DDP environment is cleared, so that the
    sweep's next job launches its own ranks instead of believing it is one.
    """
    launches = isinstance(getattr(trainer.strategy, "launcher", None), _SubprocessScriptLauncher)
    parent = launches and "LOCAL_RANK" not in os.environ and HydraConfig.initialized()
    if not parent:
        yield
        return
    hydra_cfg = HydraConfig.get()
    saved_argv = sys.argv[:]
    # (run.dir is never read here: reading it would evaluate fresh_dir and claim a directory)
    with read_write(hydra_cfg.run):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
    if hydra_cfg.mode == RunMode.MULTIRUN:
        sys.argv = [sys.argv[0], *hydra_cfg.overrides.task]
    try:
        yield
    finally:
        sys.argv = saved_argv
        for name in DDP_ENV:
            os.environ.pop(name, None)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
