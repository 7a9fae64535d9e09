"""`cvexp-train resume=RUN_DIR`: continue a run in place, from its own record and last.ckpt."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import yaml

from cvexp.errors import UserError
from cvexp.runtime.outside_launch import outside_launch
from cvexp.runtime.run_dir import RESUME_ENV, quoted


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def resume_argv(argv: list[str]) -> list[str]:
    """Rewrite `cvexp-train resume=RUN_DIR [overrides]` into the command that continues that run.

    The run's recorded overrides (`.hydra/overrides.yaml`) are composed again, the new ones
    applied on top (a new value for the same key wins), the output directory is the run's
    own, and the fit restarts from its `checkpoints/last.ckpt`: weights, optimiser, schedule,
    epoch, early-stopping and best-checkpoint state, RNG states, and the TensorBoard curves
    continue in the same folder. The run's earlier `.hydra/` record is kept under
    `.hydra/history/<time>/` before Hydra writes the new one (and put back if the attempt
    fails). Overrides that would make it another run (model, net, split) are refused.
    """
    values = [a.split("=", 1)[1] for a in argv[1:] if a.startswith("resume=")]
    if not values or os.environ.get(RESUME_ENV) or values[-1] in ("", "null"):
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
    refuse_run_changing_overrides([a for a in new if a not in original and "=" in a])
    new_keys = {_key(a) for a in new}
    kept = [o for o in original if _key(o) not in new_keys | {"ckpt_path", "resume"}]
    launch = outside_launch()
    if launch is None or launch.rank == 0:  # the other ranks of a requeued job keep no record
        history = run_dir / ".hydra" / "history" / time.strftime("%Y-%m-%d_%H-%M-%S")
        history.mkdir(parents=True, exist_ok=True)
        for file in (run_dir / ".hydra").glob("*.yaml"):
            shutil.copy2(file, history / file.name)
    os.environ[RESUME_ENV] = str(run_dir)  # DDP ranks re-run this command line: not twice
    return [
        argv[0],
        *recorded_hydra_overrides(run_dir),
        *kept,
        *new,
        f"hydra.run.dir={quoted(run_dir)}",
        "hydra.mode=RUN",  # a job of a sweep continues as the one run it is
        f"ckpt_path={quoted(last)}",
    ]


def recorded_hydra_overrides(run_dir: Path) -> list[str]:
    """The run's own `hydra.*` overrides (a search path, a launcher), except its directory."""
    record = run_dir / ".hydra" / "hydra.yaml"
    if not record.is_file():
        return []
    hydra_cfg = (yaml.safe_load(record.read_text()) or {}).get("hydra", {})
    overrides = (hydra_cfg.get("overrides") or {}).get("hydra") or []
    own = ("hydra.run.dir=", "hydra.mode=", "hydra.sweep.dir=", "hydra.sweep.subdir=")
    return [o for o in overrides if not o.startswith(own)]


# overrides that would make a resumed run a different run: another network or another split
CHANGES_THE_RUN = ("model", "experiment", "model.num_classes", "data.val_size", "data.seed", "seed")


def refuse_run_changing_overrides(overrides: list[str]) -> None:
    """Refuse, before anything is touched, new values that would make the resumed run another run."""
    changed = [
        o for o in overrides if _key(o) in CHANGES_THE_RUN or _key(o).startswith("model.net.")
    ]
    if changed:
        raise UserError(
            f"resume= continues the same run, so {', '.join(changed)} cannot change (another network, "
            "recipe or validation split would be another run); start a new run with "
            "init_from=<its checkpoint> instead."
        )


def completed_epochs(checkpoint: dict) -> int:
    """How many epochs a Lightning checkpoint's fit had completed.

    A checkpoint saved at an epoch's validation end (as last.ckpt is, every epoch) has all of
    that epoch's training batches done but the epoch not yet counted as completed: it counts.
    """
    try:
        fit_loop = checkpoint["loops"]["fit_loop"]
        progress = fit_loop["epoch_progress"]["current"]
        done = int(progress["completed"])
        if int(progress["started"]) > done and fit_loop["epoch_loop.batch_progress"].get(
            "is_last_batch"
        ):
            done += 1
        return done
    except (KeyError, TypeError, AttributeError):
        return int(checkpoint.get("epoch", 0))


def check_train_on(checkpoint: dict, max_epochs: int | None) -> None:
    """Continuing a fit needs `trainer.max_epochs` at least the epochs the checkpoint completed."""
    done = completed_epochs(checkpoint)
    if max_epochs is not None and 0 <= max_epochs < done:
        raise UserError(
            f"The checkpoint has completed {done} epochs, more than trainer.max_epochs={max_epochs}; "
            f"pass trainer.max_epochs={done + 10} (or any number of epochs above {done}) to train on."
        )


def restore_hydra_record(run_dir: Path) -> None:
    """After a failed resume: put back the run's `.hydra/` record as it was before the attempt."""
    history = run_dir / ".hydra" / "history"
    earlier = sorted(history.iterdir()) if history.is_dir() else []
    if earlier:
        for file in earlier[-1].glob("*.yaml"):
            shutil.copy2(file, run_dir / ".hydra" / file.name)
