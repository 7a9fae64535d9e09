"""Values the logger configs compute with resolvers: absolute paths, run names, MLflow tags, and
the run ids a resumed run logs on into."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cvexp.run_record import RunDir


def absolute_path(path: str) -> str:
    """`path` made absolute (against the working directory), so a store opens from anywhere."""
    return str(Path(str(path)).expanduser().resolve())


def run_label(output_dir: str) -> str:
    """A run's name for a tracking UI: the last two parts of its directory, e.g. `12-00-00/0_seed-1`."""
    parts = Path(str(output_dir)).parts
    return "/".join(parts[-2:]) if parts else "run"


def tag_dict(tags: Any, run_dir: str) -> dict[str, str]:
    """MLflow run tags: each of `tags` (a list of words) with the value 'true', and the run's
    directory as `cvexp.run_dir`."""
    return {**{str(tag): "true" for tag in (tags or [])}, "cvexp.run_dir": str(run_dir)}


def logger_run_id(logger: str, run_dir: str) -> str | None:
    """The id of the MLflow or W&B run that this run folder logged into before (None: a new
    one), so that `resume=` and a requeued job append to the same tracking run."""
    return RunDir(str(run_dir)).logger_id(logger)
