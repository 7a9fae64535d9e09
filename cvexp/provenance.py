"""Where a run's numbers came from: library versions, the device, the git commit of cvexp."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import lightning as L
import torch

import cvexp


def environment_versions() -> dict[str, str]:
    """Versions of python, torch, lightning and cvexp."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": L.__version__,
        "cvexp": cvexp.__version__,
    }


def device_name() -> str:
    """The accelerator's name, or the CPU's."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def git_commit() -> str | None:
    """The commit of the cvexp source tree, with '-dirty' when it has uncommitted changes; None outside git."""
    source = Path(cvexp.__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if dirty else commit
