"""Not a command: what the checkpoint commands (eval, visualize, predict, export) share so that
a refused input leaves no empty run folder behind.

Hydra creates the run folder, and writes its record there, before the command reads its
input; a command that then refuses the input (a checkpoint of 12 classes, say) has written
nothing else. `removed_when_refused` removes that folder again, and only when this process
claimed it (not one given as hydra.run.dir=, not a sweep job's, not one shared by the ranks
of a launcher) and it holds nothing but Hydra's record and this process's lock: nothing the
user made is removed.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from cvexp.errors import user_error_message
from cvexp.run_record import RunDir, override_key, release_lock

# launchers that start one process per rank: the folder is not this process's alone
RANK_ENV = ("LOCAL_RANK", "RANK", "SLURM_PROCID")


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
