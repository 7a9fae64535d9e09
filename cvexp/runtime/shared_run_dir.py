"""One run directory for every rank of a torchrun or SLURM launch; a requeued SLURM job back in its run.

Under torchrun or srun every rank runs cvexp-train itself, so each would compose its own
timestamped directory. Instead global rank 0 claims one, as a plain run does, and writes
`.hydra/launch.json` into it (the launcher, the SLURM job and step, the run's overrides).
The other ranks are told the directory: under torchrun through the store that torchrun's
agent serves its workers at MASTER_ADDR:MASTER_PORT, under SLURM by finding rank 0's record
among the runs. They write no `.hydra/` record of their own, and log to `<job>_rank<N>.log`.

A SLURM job that was requeued (after a preemption) finds the run it made before in the same
way, by its job id, step and overrides (runtime/continuation.py decides that).
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

from omegaconf import DictConfig, open_dict, read_write

from cvexp.errors import UserError
from cvexp.outside_launch import OutsideLaunch, slurm_restart_count
from cvexp.run_record import RunDir, runs_with_launch_records
from cvexp.runtime.continuation import run_of_slurm_job

# how long the other ranks wait for rank 0 to name the directory
WAIT_SECONDS = 300.0


def runs_root(run_dir_pattern: Path) -> Path:
    """The folder that holds every run of the pattern: `<log_dir>/outputs` for `outputs/<date>/<time>`."""
    return run_dir_pattern.parent.parent


def write_launch_record(run: RunDir, launch: OutsideLaunch, overrides: list[str]) -> None:
    """Write `.hydra/launch.json` into the run (atomically: other ranks may be reading)."""
    run.write_launch_record(
        {
            "launcher": launch.launcher,
            "world_size": launch.world_size,
            "slurm_job": launch.slurm_job,
            "slurm_step": launch.slurm_step,
            "slurm_restart_count": slurm_restart_count(),
            "overrides": overrides,
        }
    )


def torchrun_store(launch: OutsideLaunch):
    """A client of the store that torchrun's agent serves its workers."""
    from torch.distributed import TCPStore

    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        raise UserError(
            "This torchrun launch shares no store, so its ranks cannot agree on a run directory; "
            "pass hydra.run.dir=<a folder every rank can reach>."
        )
    return TCPStore(
        host_name=os.environ["MASTER_ADDR"],
        port=int(os.environ["MASTER_PORT"]),
        world_size=launch.world_size,
        is_master=False,
        timeout=timedelta(seconds=WAIT_SECONDS),
    )


def store_key() -> str:
    return f"cvexp/run_dir/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"


def wait_for_slurm_rank_zero(root: Path, launch: OutsideLaunch, overrides: list[str]) -> Path:
    """The run directory that rank 0 of this SLURM job step claimed, once it has recorded it."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        run = run_of_slurm_job(
            runs_with_launch_records(root), launch, overrides, slurm_restart_count()
        )
        if run is not None:
            return run.path
        time.sleep(0.5)
    raise UserError(
        f"Rank {launch.rank} of SLURM job {launch.slurm_job} found no run directory from rank 0 "
        f"under {root} within {WAIT_SECONDS:.0f} s; pass hydra.run.dir=<a folder every rank can reach>."
    )


def agree_on_run_dir(config: DictConfig, launch: OutsideLaunch, claim) -> None:
    """Point `hydra.run.dir` of every rank of `launch` at one directory (rank 0 claims it with `claim`)."""
    pattern = Path(str(config.hydra.run.dir))
    root = runs_root(pattern)
    overrides = list(config.hydra.overrides.task)
    if launch.rank == 0:
        run_dir = claim(pattern)
        write_launch_record(RunDir(run_dir), launch, overrides)
        if launch.launcher == "torchrun" and launch.world_size > 1:
            torchrun_store(launch).set(store_key(), str(run_dir))
    elif launch.launcher == "torchrun":
        run_dir = Path(torchrun_store(launch).get(store_key()).decode())
    else:
        run_dir = wait_for_slurm_rank_zero(root, launch, overrides)
    with read_write(config.hydra), open_dict(config.hydra):
        config.hydra.run.dir = str(run_dir)
        if launch.rank != 0:  # rank 0 keeps the run's record and train.log
            config.hydra.output_subdir = None
            config.hydra.job.name = f"{config.hydra.job.name}_rank{launch.rank}"
