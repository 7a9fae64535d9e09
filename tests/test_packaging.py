"""The configs ship inside the package, so a plain `pip install .` finds them too."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_contains_every_config(tmp_path: Path) -> None:
    pytest.importorskip("setuptools")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(ROOT),
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = tmp_path.glob("cvexp-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {
        f"cvexp/conf/{p.relative_to(ROOT / 'conf').as_posix()}"
        for p in (ROOT / "conf").rglob("*.yaml")
    }
    assert configs, "no configs found in conf/"
    assert configs <= names, sorted(configs - names)
    assert "cvexp/data/datamodule.py" in names and "cvexp/models/vgg.py" in names
