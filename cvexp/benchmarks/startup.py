"""Start-up: how long `cvexp-train --help` and `cvexp-train --cfg job` take, as a user runs them.

Each command runs as a fresh process (the console script next to this Python), in turn with a
bare `python -c pass` as the baseline, so that the machine's noise hits all three alike. The
figure is the median wall-clock time per command; the goal is 2 s on a 2-core CPU machine,
which needs torch and Lightning to stay out of the commands' start (cvexp/cli/).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cvexp.errors import UserError

COMMAND = "cvexp-train"
# the arguments of each timed command line, by the key of its figure
COMMAND_LINES = {"help_seconds": ("--help",), "cfg_job_seconds": ("--cfg", "job")}


def console_script(name: str = COMMAND) -> Path:
    """The console script `name` installed next to the running Python."""
    script = Path(sys.executable).parent / name
    if not script.is_file():
        raise UserError(
            f"{script} does not exist, so the start-up of {name} cannot be measured; install "
            "cvexp into this Python (pip install -e .) and run the benchmark again."
        )
    return script


def wall_seconds(command: list[str], cwd: Path) -> float:
    """The wall-clock seconds of one run of `command`; a failing command is a bug to report."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} exited with {done.returncode}: {done.stderr.strip()[-2000:]}"
        )
    return seconds


def measure(repeats: int = 3) -> dict[str, Any]:
    """Median wall-clock seconds of `cvexp-train --help` and `--cfg job` over `repeats` runs
    each, and of a bare Python start; `seconds` is the slower of the two commands."""
    script = console_script()
    lines = {key: [str(script), *args] for key, args in COMMAND_LINES.items()}
    lines["python_seconds"] = [sys.executable, "-c", "pass"]
    times: dict[str, list[float]] = {key: [] for key in lines}
    with tempfile.TemporaryDirectory(prefix="cvexp-startup-") as cwd:  # nothing lands in ours
        for _ in range(repeats):
            for key, command in lines.items():
                times[key].append(wall_seconds(command, Path(cwd)))
    figures = {
        key: {"median": statistics.median(values), "repeats": [round(v, 3) for v in values]}
        for key, values in times.items()
    }
    return {
        "command": COMMAND,
        "repeats": repeats,
        **figures,
        "seconds": max(figures[key]["median"] for key in COMMAND_LINES),
    }
