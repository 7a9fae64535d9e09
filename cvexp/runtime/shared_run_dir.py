"""One run directory for every rank of a torchrun or SLURM launch; a requeued SLURM job back in its run.

Under torchrun or srun every rank runs cvexp-train itself, so each would compose its own
timestamped directory. Instead global rank 0 claims one, as a plain run does, and writes
`.hydra/launch.json` into it (the launcher, the SLURM job and step, the run's overrides).
The other ranks are told the directory: under torchrun through the store that torchrun's
agent serves its workers at MASTER_ADDR:MASTER_PORT, under SLURM by finding rank 0's record
among the runs. They write no `.hydra/` record of their own, and log to `<job>_rank<N>.log`.

A SLURM job that was requeued (after a preemption) finds the run it made before in the same
way, by its job id, step and overrides, and continues it as `cvexp-train resume=RUN_DIR`
would, when that run has a `last.ckpt`.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from omegaconf import DictConfig, open_dict, read_write

from cvexp.errors import UserError
from cvexp.runtime.outside_launch import OutsideLaunch, slurm_restart_count

LAUNCH_RECORD = Path(".hydra") / "launch.json"
# how long the other ranks wait for rank 0 to name the directory
WAIT_SECONDS = 300.0


def runs_root(run_dir_pattern: Path) -> Path:
    """The folder that holds every run of the pattern: `<log_dir>/outputs` for `outputs/<date>/<time>`."""
    return run_dir_pattern.parent.parent


def launch_records(root: Path) -> list[tuple[Path, dict]]:
    """(run directory, its launch record) for every run under `root` that has one."""
    found = []
    for path in root.glob(f"*/*/{LAUNCH_RECORD.as_posix()}"):
        try:
            found.append((path.parent.parent, json.loads(path.read_text())))
        except (OSError, ValueError):
            continue
    return found


def write_launch_record(run_dir: Path, launch: OutsideLaunch, overrides: list[str]) -> None:
    """Write `.hydra/launch.json` into the run (atomically: other ranks may be reading)."""
    record = {
        "launcher": launch.launcher,
        "world_size": launch.world_size,
        "slurm_job": launch.slurm_job,
        "slurm_step": launch.slurm_step,
        "slurm_restart_count": slurm_restart_count(),
        "overrides": overrides,
    }
    path = run_dir / LAUNCH_RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as tmp:
        json.dump(record, tmp, indent=2)
    os.replace(tmp.name, path)


def run_of_this_slurm_job(
    root: Path, launch: OutsideLaunch, overrides: list[str], restart_count: int | None = None
) -> Path | None:
    """The newest run under `root` made by this SLURM job and step with these overrides
    (in its start number `restart_count`, when given)."""
    mine = [
        run
        for run, record in launch_records(root)
        if record.get("slurm_job") == launch.slurm_job
        and record.get("slurm_step") == launch.slurm_step
        and record.get("overrides") == overrides
        and restart_count in (None, record.get("slurm_restart_count"))
    ]
    return max(mine, key=lambda run: (run / LAUNCH_RECORD).stat().st_mtime, default=None)


def continue_requeued_run(run_dir: Path, launch: OutsideLaunch) -> None:
    """Replace this process by `cvexp-train resume=RUN_DIR` with the same overrides (never returns).

    The other ranks of the job do the same, and write no record of their own.
    """
    command = [sys.executable, "-m", "cvexp.train", f"resume={run_dir}", *sys.argv[1:]]
    if launch.rank != 0:
        command += ["hydra.output_subdir=null", f"hydra.job.name=train_rank{launch.rank}"]
    print(f"Requeued SLURM job {launch.slurm_job}: continuing {run_dir}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, command)


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
        run = run_of_this_slurm_job(root, launch, overrides, slurm_restart_count())
        if run is not None:
            return run
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
    if (
        launch.slurm_job is not None
        and slurm_restart_count() > 0
        and config.hydra.job.name == "train"
    ):
        earlier = run_of_this_slurm_job(root, launch, overrides)
        if earlier is not None:
            from cvexp.runtime.sweep_resume import finished_summary

            finished = finished_summary(earlier)
            if finished is not None:  # requeued after the run had finished: nothing to redo
                print(
                    f"cvexp-train: SLURM job {launch.slurm_job} was requeued after its run "
                    f"{earlier} had finished ({finished['status']}); nothing to do.",
                    file=sys.stderr,
                )
                raise SystemExit(0)
            if (earlier / "checkpoints" / "last.ckpt").is_file():
                continue_requeued_run(earlier, launch)
    if launch.rank == 0:
        run_dir = claim(pattern)
        write_launch_record(run_dir, launch, overrides)
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
