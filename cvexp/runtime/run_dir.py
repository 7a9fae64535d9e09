"""Claim a fresh run (or sweep) directory when a run really starts, never while a config resolves.

`hydra.run.dir` and `hydra.sweep.dir` are plain patterns (a timestamp under `paths.log_dir`),
so composing a config, `--help` and `--cfg job` touch nothing. `RunDirectory`, a Hydra
callback, claims the directory just before Hydra writes into it: with an atomic `mkdir`,
adding `-1`, `-2`, ... when the name is taken, so two runs started in the same second never
share one. A directory named explicitly on the command line is used as given, unless it
already holds a run: that one is refused, because writing into it would mix two runs. A sweep
with `skip_completed=true` is the exception: it continues in its folder (runtime/sweep_resume.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict, read_write

from cvexp.errors import UserError
from cvexp.runtime.outside_launch import outside_launch
from cvexp.runtime.shared_run_dir import agree_on_run_dir

# set by `cvexp-train resume=RUN_DIR`: the one existing run directory this process may write into
RESUME_ENV = "CVEXP_RESUME_DIR"
# set for the jobs of a sweep: the override keys that vary between them (see job_dirname)
SWEEP_KEYS_ENV = "CVEXP_SWEEP_KEYS"
# launchers that start one process per rank; each rank must use the directory it was given
RANK_ENV = ("LOCAL_RANK", "RANK", "SLURM_PROCID")
RUN_MARKERS = (".hydra", "summary.json", "checkpoints", "tensorboard", "multirun.yaml")


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
            print(
                f"{Path(sys.argv[0]).name}: error: cannot create the output directory {candidate} "
                f"({os.strerror(err.errno) if err.errno else err}); run from a writable folder "
                "or pass paths.log_dir=<a writable folder>.",
                file=sys.stderr,
            )
            sys.exit(2)


def holds_a_run(path: Path) -> bool:
    """Whether `path` already holds the files of a run or a sweep."""
    return path.is_dir() and any((path / name).exists() for name in RUN_MARKERS)


def explicitly_given(config: DictConfig, key: str) -> bool:
    """Whether the user set `key` (hydra.run.dir or hydra.sweep.dir) on the command line."""
    return any(o.split("=", 1)[0].lstrip("+") == key for o in config.hydra.overrides.hydra)


def refuse(message: str) -> None:
    """One sentence on stderr and exit status 2, before anything is written."""
    print(f"{Path(sys.argv[0]).name}: error: {message}", file=sys.stderr)
    sys.exit(2)


def settings_or_refuse(config: DictConfig) -> None:
    """Check the run's settings before anything is created (see runtime/settings.py)."""
    from cvexp.runtime.settings import check_settings

    try:
        check_settings(config)
    except UserError as error:
        refuse(str(error))


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
            try:
                agree_on_run_dir(config, launch, claim=claim_fresh_dir)
            except UserError as error:
                refuse(str(error))
            return
        if a_rank:
            return  # a rank of another launcher: the directory as composed
        if not given:
            claimed = claim_fresh_dir(run_dir)
            with read_write(config.hydra.run), open_dict(config.hydra.run):
                config.hydra.run.dir = str(claimed)
            return
        resuming = os.environ.get(RESUME_ENV)
        if resuming and Path(resuming).resolve() == run_dir.resolve():
            return
        if holds_a_run(run_dir):
            refuse(
                f"{run_dir} already holds a run; continue it with resume={run_dir}, or pass a new "
                "hydra.run.dir (or none, for a fresh dated one)."
            )

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from cvexp.runtime.sweep_resume import SKIP_COMPLETED_ENV

        settings_or_refuse(config)
        os.environ[SWEEP_KEYS_ENV] = ",".join(sorted(swept_keys(config)))
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if config.get("skip_completed"):
            continue_sweep_in(config, sweep_dir)
            return
        os.environ.pop(SKIP_COMPLETED_ENV, None)
        if explicitly_given(config, "hydra.sweep.dir"):
            if holds_a_run(sweep_dir) or (sweep_dir.is_dir() and any(sweep_dir.iterdir())):
                refuse(
                    f"{sweep_dir} already holds a sweep; pass a new hydra.sweep.dir (or none, for "
                    "a fresh dated one)."
                )
            return
        claimed = claim_fresh_dir(sweep_dir)
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.sweep.dir = str(claimed)
            # every job's config is composed again from these overrides: pin the claimed folder
            config.hydra.overrides.hydra.append(f"hydra.sweep.dir={quoted(claimed)}")


def continue_sweep_in(config: DictConfig, sweep_dir: Path) -> None:
    """skip_completed=true: the sweep writes into `sweep_dir` as it is (made when new), and its
    jobs skip what finished there (see runtime/sweep_resume.py)."""
    from cvexp.runtime.sweep_resume import SKIP_COMPLETED_ENV

    if (sweep_dir / ".hydra").is_dir():
        refuse(
            f"{sweep_dir} holds a single run, not a sweep; pass the folder of a sweep as "
            "hydra.sweep.dir (or continue the run with resume=)."
        )
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        refuse(
            f"cannot create the sweep directory {sweep_dir} ({err.strerror or err}); pass "
            "paths.log_dir=<a writable folder>."
        )
    os.environ[SKIP_COMPLETED_ENV] = "1"
    if not explicitly_given(config, "hydra.sweep.dir"):
        with read_write(config.hydra), open_dict(config.hydra):
            # every job's config is composed again from these overrides: pin the folder
            config.hydra.overrides.hydra.append(f"hydra.sweep.dir={quoted(sweep_dir)}")


def swept_keys(config: DictConfig) -> set[str]:
    """The keys a sweep varies: sweep overrides on the command line and the sweeper's params."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    keys = {o.key_or_group for o in parsed if o.is_sweep_override()}
    return keys | {str(k) for k in (config.hydra.sweeper.get("params") or {})}


def job_dirname(*, _root_: DictConfig) -> str:
    """A sweep job's folder name: the values of the keys the sweep varies, e.g.
    `model-vgg16+seed-1` (every override when they are not known); the constant overrides
    are in the job's .hydra/overrides.yaml, so the name is short and its varying values are
    never cut."""
    from cvexp.runtime.hydra_app import path_safe

    excluded = set(_root_.hydra.job.config.override_dirname.exclude_keys)
    varying = {k for k in os.environ.get(SWEEP_KEYS_ENV, "").split(",") if k}
    items = []
    for override in sorted(_root_.hydra.overrides.task):
        key, _, value = override.partition("=")
        key = key.lstrip("+~")
        if key not in excluded and (not varying or key in varying):
            items.append(f"{key}-{value}")
    return path_safe("+".join(items))


def quoted(value: str | Path) -> str:
    """A path as a quoted Hydra override value, so '=' or ',' in it cannot break the grammar."""
    return f"'{value}'" if "'" not in str(value) else f'"{value}"'
