"""Which rank of a launch made outside cvexp (torchrun, SLURM tasks) this process is, if any."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class OutsideLaunch:
    """One process of a launch started by torchrun or SLURM, one process per rank.

    `rank` is the global rank (0 decides the run directory), `world_size` the number of
    processes, `slurm_job` the SLURM job (`<array job>_<task>` for an array job) or None.
    """

    launcher: str  # "torchrun" or "slurm"
    rank: int
    world_size: int
    slurm_job: str | None
    slurm_step: str


def slurm_job_id() -> str | None:
    """The SLURM job this process belongs to, as `scontrol requeue` names it; None outside SLURM."""
    array_job, array_task = (
        os.environ.get("SLURM_ARRAY_JOB_ID"),
        os.environ.get("SLURM_ARRAY_TASK_ID"),
    )
    if array_job and array_task:
        return f"{array_job}_{array_task}"
    return os.environ.get("SLURM_JOB_ID") or None


def outside_launch() -> OutsideLaunch | None:
    """The torchrun or SLURM launch that started this process, or None for a plain start.

    torchrun's workers have `TORCHELASTIC_RUN_ID`; SLURM's tasks (and a batch script) have
    `SLURM_JOB_ID`.
    """
    slurm_job = slurm_job_id()
    if "TORCHELASTIC_RUN_ID" in os.environ:
        return OutsideLaunch(
            launcher="torchrun",
            rank=int(os.environ.get("RANK", "0")),
            world_size=int(os.environ.get("WORLD_SIZE", "1")),
            slurm_job=slurm_job,
            slurm_step=os.environ.get("SLURM_STEP_ID", "batch"),
        )
    if slurm_job is not None:
        return OutsideLaunch(
            launcher="slurm",
            rank=int(os.environ.get("SLURM_PROCID", "0")),
            world_size=int(os.environ.get("SLURM_NTASKS", "1")),
            slurm_job=slurm_job,
            slurm_step=os.environ.get("SLURM_STEP_ID", "batch"),
        )
    return None


def slurm_restart_count() -> int:
    """How often SLURM has started this job again after a requeue (`SLURM_RESTART_COUNT`)."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
