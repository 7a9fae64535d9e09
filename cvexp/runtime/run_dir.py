"""Claim a fresh run (or sweep) directory when a run really starts, never while a config resolves.

`hydra.run.dir` and `hydra.sweep.dir` are plain patterns (a timestamp under `paths.log_dir`),
so composing a config, `--help` and `--cfg job` touch nothing. `RunDirectory`, a Hydra
callback, claims the directory just before Hydra writes into it: with an atomic `mkdir`,
adding `-1`, `-2`, ... when the name is taken, so two runs started in the same second never
share one. A directory named explicitly on the command line is used as given, unless it
already holds a run: that one is refused, because writing into it would mix two runs, unless
the run continues it (`resume=`, a requeued SLURM job, or a sweep with `skip_completed=true`:
see runtime/continuation.py). A sweep continued with `skip_completed=true` keeps its earlier
`multirun.yaml` (which Hydra's sweeper writes anew) as `multirun_history/<time>.yaml`.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from cvexp.errors import UserError, exit_with_error, user_error_message
from cvexp.outside_launch import outside_launch
from cvexp.run_record import (
    RECORD_DIR,
    RunDir,
    RunInUse,
    claim_lock,
    override_key,
    release_lock,
    runs_with_launch_records,
)
from cvexp.runtime.continuation import keep_history, keep_sweep_record, quoted, requeued_run
from cvexp.runtime.hydra_app import path_safe
from cvexp.runtime.settings import check_settings
from cvexp.runtime.shared_run_dir import agree_on_run_dir, runs_root

# launchers that start one process per rank; each rank must use the directory it was given
RANK_ENV = ("LOCAL_RANK", "RANK", "SLURM_PROCID")


def claim_fresh_dir(path: str | Path) -> Path:
    """Create `path`, or `path-1`, `path-2`, ... if taken (atomically), and return it."""
    base, n = str(path), 0
    while True:
        candidate = Path(base if n == 0 else f"{base}-{n}")
        try:
            candidate.parent.mkdir(parents=True, exist_ok=True)
            candidate.mkdir()
            return candidate
        except FileExistsError:
            n += 1
        except OSError as err:
            exit_with_error(
                f"cannot create the output directory {candidate} "
                f"({os.strerror(err.errno) if err.errno else err}); run from a writable folder "
                "or pass paths.log_dir=<a writable folder>."
            )


def explicitly_given(config: DictConfig, key: str) -> bool:
    """Whether the user set `key` (hydra.run.dir or hydra.sweep.dir) on the command line."""
    return any(o.split("=", 1)[0].lstrip("+") == key for o in config.hydra.overrides.hydra)


def settings_or_refuse(config: DictConfig) -> None:
    """Check the run's settings before anything is created (see runtime/settings.py)."""
    try:
        check_settings(config)
    except UserError as error:
        exit_with_error(str(error))


class RunDirectory(Callback):
    """Hydra callback: claim a fresh run or sweep directory; refuse to write into an existing run."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        settings_or_refuse(config)
        given = explicitly_given(config, "hydra.run.dir")
        a_rank = any(name in os.environ for name in RANK_ENV)
        if given and a_rank:
            return  # a rank of a multi-process launch: use the directory it was given
        run_dir = Path(str(config.hydra.run.dir))
        launch = outside_launch()
        if not given and launch is not None:  # torchrun or SLURM: every rank agrees on one
            requeued = requeued_run(config, launch, runs_with_launch_records(runs_root(run_dir)))
            if requeued is not None:  # continue it, as resume= would
                if launch.rank == 0:
                    lock_or_refuse(requeued)
                continue_requeued(config, requeued, launch.rank)
                return
            try:
                agree_on_run_dir(config, launch, claim=claim_fresh_dir)
            except UserError as error:
                exit_with_error(str(error))
            return
        if a_rank:
            return  # a rank of another launcher: the directory as composed
        if not given:
            claimed = claim_fresh_dir(run_dir)
            with read_write(config.hydra.run), open_dict(config.hydra.run):
                config.hydra.run.dir = str(claimed)
            lock_or_refuse(RunDir(claimed))
            return
        resuming = config.get("resume")
        continuing = resuming and Path(str(resuming)).resolve() == run_dir.resolve()
        if not continuing and RunDir(run_dir).holds_a_run():
            exit_with_error(
                f"{run_dir} already holds a run; continue it with resume={run_dir}, or pass a new "
                "hydra.run.dir (or none, for a fresh dated one)."
            )
        lock_or_refuse(RunDir(run_dir))

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        release_lock(RunDir(str(config.hydra.run.dir)))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        settings_or_refuse(config)
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if config.get("skip_completed"):
            continue_sweep_in(config, sweep_dir)
            return
        if explicitly_given(config, "hydra.sweep.dir"):
            if RunDir(sweep_dir).holds_a_run() or (sweep_dir.is_dir() and any(sweep_dir.iterdir())):
                exit_with_error(
                    f"{sweep_dir} already holds a sweep; pass a new hydra.sweep.dir (or none, for "
                    "a fresh dated one)."
                )
            return
        claimed = claim_fresh_dir(sweep_dir)
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.sweep.dir = str(claimed)
            # every job's config is composed again from these overrides: pin the claimed folder
            config.hydra.overrides.hydra.append(f"hydra.sweep.dir={quoted(claimed)}")


def lock_or_refuse(run: RunDir) -> None:
    """Hold the run folder's lock for this process (released when the run ends, or at exit);
    refuse, in one sentence, a folder that another live process writes into."""
    try:
        claim_lock(run)
    except RunInUse as holder:
        exit_with_error(
            f"{run.path} is in use by {holder}; wait until that run ends (or stop it) before "
            f"continuing it, or pass another hydra.run.dir (if that process is gone, delete "
            f"{run.lock_path})."
        )
    except OSError as err:
        exit_with_error(
            f"cannot write into the run directory {run.path} ({err.strerror or err}); pass "
            "paths.log_dir=<a writable folder>."
        )
    atexit.register(release_lock, run)


def continue_sweep_in(config: DictConfig, sweep_dir: Path) -> None:
    """skip_completed=true: the sweep writes into `sweep_dir` as it is (made when new), and its
    jobs skip what finished there (see runtime/continuation.py); its earlier `multirun.yaml`
    is kept in `multirun_history/` before Hydra's sweeper writes the new one."""
    if RunDir(sweep_dir).record_dir.is_dir():
        exit_with_error(
            f"{sweep_dir} holds a single run, not a sweep; pass the folder of a sweep as "
            "hydra.sweep.dir (or continue the run with resume=)."
        )
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        exit_with_error(
            f"cannot create the sweep directory {sweep_dir} ({err.strerror or err}); pass "
            "paths.log_dir=<a writable folder>."
        )
    sweep = RunDir(sweep_dir)
    try:
        keep_sweep_record(sweep)
    except OSError as err:
        exit_with_error(
            f"cannot keep a copy of {sweep.sweep_record_path} in {sweep.sweep_history_dir} "
            f"({err.strerror or err}); make the sweep folder writable, then run it again."
        )
    if not explicitly_given(config, "hydra.sweep.dir"):
        with read_write(config.hydra), open_dict(config.hydra):
            # every job's config is composed again from these overrides: pin the folder
            config.hydra.overrides.hydra.append(f"hydra.sweep.dir={quoted(sweep_dir)}")


def swept_keys(task_overrides: list[str], sweeper_params: Any) -> set[str]:
    """The keys a sweep varies: sweep overrides on its command line and the sweeper's params."""
    parsed = OverridesParser.create().parse_overrides(list(task_overrides))
    keys = {o.key_or_group for o in parsed if o.is_sweep_override()}
    return keys | {str(k) for k in (sweeper_params or {})}


def job_dirname(*, _root_: DictConfig) -> str:
    """A sweep job's folder name: the values of the keys the sweep varies, e.g.
    `model-vgg16+seed-1` (every override when they are not known); the constant overrides
    are in the job's .hydra/overrides.yaml, so the name is short and its varying values are
    never cut.

    The varying keys are the sweeper's params (an Optuna search space) and the sweep overrides
    of the command line, read from the sweep's own record (`multirun.yaml`, written by Hydra's
    basic sweeper before its first job).
    """
    excluded = set(_root_.hydra.job.config.override_dirname.exclude_keys)
    sweep = (
        OmegaConf.load(RunDir(str(_root_.hydra.sweep.dir)).sweep_record_path)
        if (RunDir(str(_root_.hydra.sweep.dir)).sweep_record_path.is_file())
        else None
    )
    command_line = OmegaConf.select(sweep, "hydra.overrides.task", default=[]) if sweep else []
    varying = swept_keys(list(command_line), _root_.hydra.sweeper.get("params"))
    items = []
    for override in sorted(_root_.hydra.overrides.task):
        key, _, value = override.partition("=")
        key = key.lstrip("+~")
        if key not in excluded and (not varying or key in varying):
            items.append(f"{key}-{value}")
    return path_safe("+".join(items))


def record_subdir(*, _root_: DictConfig) -> str | None:
    """`hydra.output_subdir`: `.hydra`, or None (no record written) for a finished job that a
    sweep with skip_completed=true skips, so that its recorded config stays as it was."""
    skipping = _root_.get("skip_completed") and _root_.hydra.mode == RunMode.MULTIRUN
    output_dir = OmegaConf.select(_root_, "hydra.runtime.output_dir", default=None)
    if skipping and output_dir and RunDir(str(output_dir)).finished_summary() is not None:
        return None
    return RECORD_DIR


def continue_requeued(config: DictConfig, run: RunDir, rank: int) -> None:
    """A requeued SLURM job continues its earlier run in place, as `resume=` would."""
    print(f"Requeued SLURM job: continuing {run.path}", file=sys.stderr)
    if rank == 0:
        keep_history(run)
    path = run.path.resolve()
    with read_write(config), open_dict(config):
        config.resume = str(path)
        config.hydra.run.dir = str(path)
        # the run's record says how it went on (and a later resume= drops it again)
        config.hydra.overrides.task.append(f"resume={quoted(path)}")
        if rank != 0:  # rank 0 keeps the run's record and train.log
            config.hydra.output_subdir = None
            config.hydra.job.name = f"{config.hydra.job.name}_rank{rank}"


# --------------------------------------------------------------------------------------------
# A refused input leaves no empty run folder behind (cvexp-eval, -visualize, -predict, -export).
# Hydra creates the run folder, and writes its record there, before the command reads its
# input; a command that then refuses the input (a checkpoint of 12 classes, say) has written
# nothing else. `removed_when_refused` removes that folder again, and only when this process
# claimed it (not one given as hydra.run.dir=, not a sweep job's, not one shared by the ranks
# of a launcher) and it holds nothing but Hydra's record and this process's lock: nothing the
# user made is removed.
# --------------------------------------------------------------------------------------------


@contextmanager
def removed_when_refused() -> Iterator[None]:
    """On an error the user can fix, remove the run folder if it is unused (see the module)."""
    try:
        yield
    except Exception as error:
        if user_error_message(error) is not None:
            remove_unused_run_dir()
        raise


def remove_unused_run_dir() -> Path | None:
    """Remove this single run's folder when it was claimed fresh and holds only Hydra's record
    (and the job's log file); returns the folder removed, if any."""
    if not HydraConfig.initialized() or any(name in os.environ for name in RANK_ENV):
        return None
    hydra = HydraConfig.get()
    given = any(override_key(o) == "hydra.run.dir" for o in hydra.overrides.hydra)
    if hydra.mode != RunMode.RUN or given:
        return None
    run = RunDir(hydra.runtime.output_dir)
    release_lock(run)  # this process's; a lock that stays is another's
    record = {p.name for p in (run.config_path, run.hydra_record_path, run.overrides_path)}
    try:
        extra = set(os.listdir(run.path)) - {run.record_dir.name, f"{hydra.job.name}.log"}
        if run.record_dir.is_dir():
            extra |= set(os.listdir(run.record_dir)) - record
    except OSError:  # gone, or not a folder: nothing to do
        return None
    if extra:
        return None
    shutil.rmtree(run.path, ignore_errors=True)
    return run.path
