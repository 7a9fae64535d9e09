"""`cvexp-train resume=RUN_DIR`: continue a run in place, from its own record and last.ckpt."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import yaml

from cvexp.runtime.errors import UserError
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
    `.hydra/history/<time>/` before Hydra writes the new one.
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
    new_keys = {_key(a) for a in new}
    kept = [o for o in original if _key(o) not in new_keys | {"ckpt_path", "resume"}]
    history = run_dir / ".hydra" / "history" / time.strftime("%Y-%m-%d_%H-%M-%S")
    history.mkdir(parents=True, exist_ok=True)
    for file in (run_dir / ".hydra").glob("*.yaml"):
        shutil.copy2(file, history / file.name)
    os.environ[RESUME_ENV] = str(run_dir)  # DDP ranks re-run this command line: not twice
    return [
        argv[0],
        *kept,
        *new,
        f"hydra.run.dir={quoted(run_dir)}",
        f"ckpt_path={quoted(last)}",
    ]
