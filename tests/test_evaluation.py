"""cvexp-eval on checkpoints it must refuse (the full evaluation of a real run: test_cli.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

from cvexp.errors import UserError
from cvexp.evaluation import evaluate
from cvexp.runtime.config import compose_config
from tests.conftest import assert_one_clear_error, run_cli
from tests.tiny_checkpoint import write_tiny_checkpoint


@pytest.fixture
def twelve_classes(tmp_path: Path) -> Path:
    return write_tiny_checkpoint(tmp_path / "ckpt" / "twelve.ckpt", "resnet", num_classes=12)


def test_a_model_of_twelve_classes_is_refused_before_anything_is_written(
    tmp_path: Path, twelve_classes: Path, data_root: Path
) -> None:
    cfg = compose_config(
        "eval",
        [f"ckpt_path={twelve_classes}", f"data.root={data_root}", "trainer.accelerator=cpu"],
        tmp_path / "eval",
    )
    try:
        with pytest.raises(UserError, match=r"model of 12 classes.*has 10.*model\.num_classes=10"):
            evaluate(cfg)
    finally:
        GlobalHydra.instance().clear()
    assert not (tmp_path / "eval").exists()


@pytest.mark.slow
def test_eval_cli_refuses_twelve_classes_and_leaves_no_folder(
    tmp_path: Path, twelve_classes: Path, data_root: Path
) -> None:
    result = run_cli(
        "cvexp-eval", f"ckpt_path={twelve_classes}", f"data.root={data_root}", cwd=tmp_path
    )
    assert result.returncode == 2
    assert_one_clear_error(result, "model of 12 classes", "model.num_classes=10")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert list((tmp_path / "outputs" / "eval").iterdir()) == []  # its run folder removed again


@pytest.mark.slow
def test_a_refusal_keeps_a_run_folder_given_on_the_command_line(
    tmp_path: Path, twelve_classes: Path
) -> None:
    mine = tmp_path / "my_folder"
    mine.mkdir()
    result = run_cli(
        "cvexp-eval", f"ckpt_path={twelve_classes}", f"hydra.run.dir={mine}", cwd=tmp_path
    )
    assert result.returncode == 2, result.stderr
    assert mine.is_dir() and (mine / ".hydra").is_dir()  # the user's folder: never removed
