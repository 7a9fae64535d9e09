"""SweepReport: a Hydra callback that reports a sweep's failed jobs and makes the exit status say so."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from cvexp.run_record import RunDir


def job_statuses(sweep_dir: Path) -> dict[str, str]:
    """Each job directory's status from its summary.json ('missing' when there is none)."""
    statuses = {}
    for path in sorted(p for p in sweep_dir.iterdir() if p.is_dir()):
        job = RunDir(path)
        if job.record_dir.is_dir():
            summary = job.read_summary()
            statuses[path.name] = summary.get("status", "?") if summary else "missing"
    return statuses


class SweepReport(Callback):
    """After a multirun: print one line per failed job, and exit with status 1 if any failed."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        statuses = job_statuses(sweep_dir)
        failed = {
            job: status for job, status in statuses.items() if status in ("failed", "missing")
        }
        print(
            f"sweep {sweep_dir}: {len(statuses) - len(failed)} of {len(statuses)} jobs finished",
            file=sys.stderr,
        )
        if failed:
            for job, status in failed.items():
                print(f"  {status}: {sweep_dir / job}", file=sys.stderr)
            sys.exit(1)
