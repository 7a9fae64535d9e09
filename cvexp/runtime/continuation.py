"""How a run continues: the one decision, made once per run (once per job in a sweep).

A run directory can be continued in four ways besides a fresh start (docs/internals.md draws
them as a state diagram):

- **resume in place**: `cvexp-train resume=RUN_DIR [overrides]`. Before Hydra parses the
  command line, `resume_command_line` turns it into that run's own command line: its recorded
  overrides (`.hydra/overrides.yaml`), the new ones on top, its folder as `hydra.run.dir`, and
  `resume=<its absolute path>`. This is the only change of argv, and it happens before
  parsing. Relative paths (`data.root`) are pinned as the run saw them, and `init_from` is not
  read again: `last.ckpt` holds every weight.
- **requeue**: a SLURM job started again after a preemption (`SLURM_RESTART_COUNT` above 0)
  finds the run it made before (`requeued_run`, from the launch records that rank 0 wrote)
  and continues it as a resume in place would; RunDirectory points the run at it.
- **skip a finished sweep job**: a sweep run again into its folder with `skip_completed=true`
  does not run a job whose summary.json says it finished; the sweeper gets its recorded result.
  The sweep's `multirun.yaml`, which Hydra's sweeper writes anew, is first copied to
  `multirun_history/<time>.yaml` in the sweep folder (`keep_sweep_record`), so the record of
  every earlier run of the sweep is kept.
- **continue an interrupted sweep job** from its `last.ckpt`, in place (same sweep rerun).

`decide(cfg)` reads the composed config (`resume`, `skip_completed`, Hydra's mode, the job's
folder) and that folder's record, and returns a `Continuation`, which the training task reads:
no environment variables pass the decision between cvexp's modules.
"""

from __future__ import annotations

import enum
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, read_write
from omegaconf.errors import OmegaConfBaseException

from cvexp.errors import UserError
from cvexp.outside_launch import OutsideLaunch, slurm_restart_count
from cvexp.run_record import RunDir, latest_unfinished_run, override_key
from cvexp.runtime.hydra_app import VERSION_BASE, in_multirun


class How(enum.Enum):
    """The ways a run can start."""

    FRESH = "fresh"
    RESUME = "resume"  # resume= in place, or a requeued SLURM job
    SKIP_FINISHED = "skip_finished"
    CONTINUE_INTERRUPTED = "continue_interrupted"


@dataclass(frozen=True)
class Continuation:
    """The decision: how this run starts, the run it continues, and that run's earlier summary."""

    how: How
    run: RunDir | None = None
    earlier: dict[str, Any] | None = None

    @property
    def ckpt_path(self) -> str | None:
        """The checkpoint the fit continues from (None for a fresh run or a skipped job)."""
        if self.how in (How.RESUME, How.CONTINUE_INTERRUPTED) and self.run is not None:
            return str(self.run.last_checkpoint)
        return None


FRESH = Continuation(How.FRESH)

# overrides that would make a resumed run a different run: another network or another split
CHANGES_THE_RUN = (
    "model",
    "experiment",
    "model.num_classes",
    "data.val_size",
    "data.folds",
    "data.fold",
    "data.seed",
    "seed",
)
# a launch's own settings, which a resumed run takes from this command line, not the record
OWN_HYDRA_KEYS = ("hydra.run.dir", "hydra.mode", "hydra.sweep.dir", "hydra.sweep.subdir")


def decide(cfg: DictConfig) -> Continuation:
    """How this run (or sweep job) starts; see the module's docstring."""
    if cfg.get("resume"):
        run = RunDir(str(cfg.resume))
        return Continuation(How.RESUME, run, run.read_summary())
    if not (cfg.get("skip_completed") and in_multirun()):
        return FRESH
    job = RunDir(str(cfg.paths.output_dir))
    finished = job.finished_summary()
    if finished is not None:
        return Continuation(How.SKIP_FINISHED, job, finished)
    # interrupted, or killed before it could say so; a job that failed with an error runs
    # again from the start, and so does one given its own ckpt_path
    if not cfg.get("ckpt_path") and job.was_stopped() and job.last_checkpoint.is_file():
        return Continuation(How.CONTINUE_INTERRUPTED, job, job.read_summary())
    return FRESH


def pin_for_other_ranks(continuation: Continuation) -> None:
    """DDP's other ranks start from the sweep job's overrides: give them its checkpoint too."""
    if continuation.how is How.CONTINUE_INTERRUPTED and HydraConfig.initialized():
        overrides = HydraConfig.get().overrides
        with read_write(overrides):
            overrides.task.append(f"ckpt_path={quoted(continuation.ckpt_path)}")
            overrides.task.append("init_from=null")  # last.ckpt holds every weight


# --------------------------------------------------------------------------------------------
# resume in place: the run's own command line, made before Hydra parses it
# --------------------------------------------------------------------------------------------


def resume_target(argv: list[str]) -> Path | None:
    """The run folder of `resume=RUN_DIR` on a command line (quotes removed), or None.

    `resume=last` is the newest run under `paths.log_dir` that has a last.ckpt and did not
    finish (see `run_record.latest_unfinished_run`).
    """
    values = [a.split("=", 1)[1] for a in argv[1:] if a.startswith("resume=")]
    if not values or values[-1].strip() in ("", "null"):
        return None
    value = values[-1].strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]  # resume='dir with space', quoted as Hydra wants values quoted
    if value == "last" and not Path("last").exists():
        return latest_run_to_resume(argv)
    return Path(value).expanduser().resolve()


def latest_run_to_resume(argv: list[str]) -> Path:
    """`resume=last`: the newest unfinished run with a last.ckpt under `paths.log_dir` (as the
    command line composes it), or a UserError that says there is none."""
    overrides = [a for a in argv[1:] if "=" in a and not a.startswith(("resume=", "-"))]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="cvexp.conf", version_base=VERSION_BASE):
            log_dir = str(compose("train", overrides=overrides).paths.log_dir)
    except Exception as error:  # Hydra says what is wrong with the overrides when it parses them
        raise UserError(
            f"resume=last could not compose the command line to find paths.log_dir ({error}); "
            "pass resume=<a run directory>."
        ) from None
    finally:
        GlobalHydra.instance().clear()
    runs = Path(log_dir).expanduser().resolve() / "outputs"
    run = latest_unfinished_run(runs)
    if run is None:
        raise UserError(
            f"resume=last found no unfinished run with a checkpoints/last.ckpt under {runs}; "
            "pass resume=<a run directory>, or paths.log_dir=<the folder the runs went to>."
        )
    print(f"cvexp-train: resume=last continues {run.path}", file=sys.stderr)
    return run.path.resolve()


def resume_command_line(argv: list[str], launch: OutsideLaunch | None) -> list[str]:
    """`cvexp-train resume=RUN_DIR [overrides]` as the command line that continues that run.

    Idempotent: DDP's other ranks start from the command line this returns, and get it back.
    The run's earlier `.hydra/` record is kept under `.hydra/history/<time>/` before Hydra
    writes the new one (by one process only). Overrides that would make it another run are
    refused.
    """
    target = resume_target(argv)
    if target is None:
        return argv
    if "-m" in argv or "--multirun" in argv:
        raise UserError(
            "resume= continues one run; drop -m (resume each job of a sweep on its own)."
        )
    if f"hydra.run.dir={quoted(target)}" in argv:
        return argv  # already this run's command line
    run = RunDir(target)
    if not run.is_run():
        raise UserError(
            f"{target} is not a run directory (it has no .hydra/overrides.yaml); pass "
            "resume=<a run directory, such as outputs/<date>/<time>>."
        )
    if not run.last_checkpoint.is_file():
        raise UserError(
            f"{target} has no checkpoints/last.ckpt to resume from; start a new run, or pass "
            "ckpt_path=<a checkpoint> to start one from it."
        )
    original = run.recorded_overrides()
    added = {override_key(o) for o in original if o.startswith("+")}  # keys the run added
    flags, new = split_flags([a for a in argv[1:] if not a.startswith("resume=")])
    # '++' sets a key that exists only because the run added it, now that its '+' is dropped
    new = [
        f"++{a}" if override_key(a) in added and not a.startswith(("+", "~")) else a for a in new
    ]
    refuse_run_changing_overrides([a for a in new if a not in original and "=" in a])
    new_keys = {override_key(a) for a in new}
    pinned = pinned_paths(run, new_keys)
    dropped = new_keys | {override_key(o) for o in pinned} | {"ckpt_path", "resume", "init_from"}
    kept = [o for o in original if override_key(o) not in dropped]
    prints_only = any(flag in PRINT_ONLY_FLAGS for flag in flags)  # --cfg, --help: no run
    if (launch is None or launch.rank == 0) and not prints_only:  # other ranks keep no record
        keep_history(run)
    return [
        argv[0],
        *flags,  # Hydra's flags before its overrides, as its command line wants them
        *[o for o in run.recorded_hydra_overrides() if override_key(o) not in OWN_HYDRA_KEYS],
        *kept,
        *pinned,
        *new,
        f"hydra.run.dir={quoted(target)}",
        "hydra.mode=RUN",  # a job of a sweep continues as the one run it is
        f"resume={quoted(target)}",
    ]


# Hydra's flags that take the next argument as their value, and those that print and exit
FLAGS_WITH_VALUE = (
    "--cfg",
    "-c",
    "--package",
    "-p",
    "--info",
    "-i",
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--shell-completion",
    "-sc",
)
PRINT_ONLY_FLAGS = (
    "--cfg",
    "-c",
    "--help",
    "-h",
    "--hydra-help",
    "--info",
    "-i",
    "--shell-completion",
    "-sc",
    "--version",
)


def split_flags(arguments: list[str]) -> tuple[list[str], list[str]]:
    """(Hydra's flags with their values, the overrides) of a command line's arguments."""
    flags: list[str] = []
    overrides: list[str] = []
    waiting_for_value = False
    for argument in arguments:
        if waiting_for_value:
            flags.append(argument)
            waiting_for_value = False
        elif argument.startswith("-"):
            flags.append(argument)
            waiting_for_value = argument in FLAGS_WITH_VALUE and "=" not in argument
        else:
            overrides.append(argument)
    return flags, overrides


def pinned_paths(run: RunDir, new_keys: set[str]) -> list[str]:
    """`data.root` as an absolute path when the run read a relative one: read against the
    folder the run started in, not against this command's working directory.

    Hydra records the config unresolved, so a default such as `${data_root:}` (CVEXP_DATA, or
    ./data) is resolved here, as the run resolved it.
    """
    config = run.recorded_config() or {}
    root = (config.get("data") or {}).get("root")
    started_in = ((run.recorded_hydra_config() or {}).get("runtime") or {}).get("cwd")
    if "data.root" in new_keys or not isinstance(root, str) or not started_in:
        return []
    try:
        root = str(OmegaConf.create({"root": root}).root)  # resolves an interpolation
    except OmegaConfBaseException:
        return []  # an interpolation of keys outside data: left as the run recorded it
    if Path(root).expanduser().is_absolute():
        return []
    return [f"data.root={quoted(Path(str(started_in)) / root)}"]


def refuse_run_changing_overrides(overrides: list[str]) -> None:
    """Refuse new values that would make the resumed run another run, before anything is touched."""
    changed = [
        o
        for o in overrides
        if override_key(o) in CHANGES_THE_RUN or override_key(o).startswith("model.net.")
    ]
    if changed:
        raise UserError(
            f"resume= continues the same run, so {', '.join(changed)} cannot change (another "
            "network, recipe or validation split would be another run); start a new run with "
            "init_from=<its checkpoint> instead."
        )


def keep_history(run: RunDir) -> None:
    """Copy the run's `.hydra/*.yaml` record to `.hydra/history/<time>/`."""
    history = run.history_dir / time.strftime("%Y-%m-%d_%H-%M-%S")
    history.mkdir(parents=True, exist_ok=True)
    for file in run.record_dir.glob("*.yaml"):
        shutil.copy2(file, history / file.name)


def keep_sweep_record(sweep: RunDir) -> Path | None:
    """Copy the sweep's `multirun.yaml` to `multirun_history/<time>.yaml` (`-1`, `-2`, ... added
    when the name is taken), before Hydra's sweeper writes a new one; the copy, or None when
    there is no record. A record already kept byte for byte is not copied again."""
    record = sweep.sweep_record_path
    if not record.is_file():
        return None
    content = record.read_bytes()
    history = sweep.sweep_history_dir
    for kept in sorted(history.glob("*.yaml")) if history.is_dir() else []:
        if kept.read_bytes() == content:
            return kept
    history.mkdir(parents=True, exist_ok=True)
    stamp, n = time.strftime("%Y-%m-%d_%H-%M-%S"), 0
    while True:
        copy = history / (f"{stamp}.yaml" if n == 0 else f"{stamp}-{n}.yaml")
        try:
            with open(copy, "xb") as file:  # never over an earlier copy
                file.write(content)
        except FileExistsError:
            n += 1
            continue
        shutil.copystat(record, copy)
        return copy


def restore_history(run: RunDir) -> None:
    """After a failed resume: put back the run's `.hydra/` record as it was before the attempt."""
    earlier = sorted(run.history_dir.iterdir()) if run.history_dir.is_dir() else []
    if earlier:
        for file in earlier[-1].glob("*.yaml"):
            shutil.copy2(file, run.record_dir / file.name)


# --------------------------------------------------------------------------------------------
# requeue: a SLURM job started again finds its run
# --------------------------------------------------------------------------------------------


def requeued_run(config: DictConfig, launch: OutsideLaunch, runs: list[RunDir]) -> RunDir | None:
    """The run that this requeued SLURM job made before, when it should be continued.

    None when the job was not requeued, or its earlier run cannot be found or has no
    last.ckpt (it then starts afresh). A requeue after the run finished exits at once.
    """
    if launch.slurm_job is None or slurm_restart_count() == 0 or config.hydra.job.name != "train":
        return None
    earlier = run_of_slurm_job(runs, launch, list(config.hydra.overrides.task))
    if earlier is None:
        return None
    finished = earlier.finished_summary()
    if finished is not None:
        print(
            f"cvexp-train: SLURM job {launch.slurm_job} was requeued after its run {earlier.path} "
            f"had finished ({finished['status']}); nothing to do.",
            file=sys.stderr,
        )
        raise SystemExit(0)
    return earlier if earlier.last_checkpoint.is_file() else None


def run_of_slurm_job(
    runs: list[RunDir],
    launch: OutsideLaunch,
    overrides: list[str],
    restart_count: int | None = None,
) -> RunDir | None:
    """The newest of `runs` made by this SLURM job and step with these overrides (in its start
    number `restart_count`, when given)."""
    mine = []
    for run in runs:
        record = run.read_launch_record() or {}
        if (
            record.get("slurm_job") == launch.slurm_job
            and record.get("slurm_step") == launch.slurm_step
            and record.get("overrides") == overrides
            and restart_count in (None, record.get("slurm_restart_count"))
        ):
            mine.append(run)
    return max(mine, key=lambda run: run.launch_record_path.stat().st_mtime, default=None)


def quoted(value: str | Path) -> str:
    """A path as a quoted Hydra override value, so '=' or ',' in it cannot break the grammar."""
    return f"'{value}'" if "'" not in str(value) else f'"{value}"'
