"""The configs ship inside the package, so a plain `pip install .` finds them too; a machine's
conf/local/*.yaml never does."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_contains_every_config(tmp_path: Path) -> None:
    pytest.importorskip("setuptools")
    # a copy of the checkout that holds a machine's local settings, as a user's may
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in ("cvexp", "conf"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    (source / "conf" / "local" / "default.yaml").write_text("# @package _global_\nseed: 1\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(source),
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
        f"cvexp/conf/{p.relative_to(source / 'conf').as_posix()}"
        for p in (source / "conf").rglob("*.yaml")
        if p.parent.name != "local"
    }
    assert configs, "no configs found in conf/"
    assert configs <= names, sorted(configs - names)
    # conf/local/*.yaml are one machine's git-ignored settings: never in a wheel
    assert not [name for name in names if name.startswith("cvexp/conf/local/")]
    assert "cvexp/runtime/config_dir.py" in names  # CVEXP_CONFIG_DIR
    assert "cvexp/data/datamodule.py" in names and "cvexp/models/vgg.py" in names
