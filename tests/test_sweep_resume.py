"""Finishing sweeps: skip_completed=true on a grid sweep, and an Optuna study that resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import CLI_TINY, run_cli, snapshot, write_batches_dir

TINY = [*CLI_TINY, "trainer.max_epochs=2"]


@pytest.mark.slow
def test_a_grid_sweep_is_finished_in_its_folder(tmp_path: Path, tiny) -> None:
    write_batches_dir(tmp_path / "data", tiny)
    sweep = tmp_path / "sweep"
    command = ["-m", *TINY, "seed=1,2", f"hydra.sweep.dir={sweep}"]
    assert run_cli("cvexp-train", *command, cwd=tmp_path).returncode == 0
    done, cut = sorted(p for p in sweep.iterdir() if p.is_dir())
    # the second job was interrupted: its summary says so
    summary = json.loads((cut / "summary.json").read_text())
    (cut / "summary.json").write_text(json.dumps({**summary, "status": "interrupted"}))
    before = {p: b for p, b in snapshot(done).items() if p.name != "train.log"}

    refused = run_cli("cvexp-train", *command, cwd=tmp_path)  # off by default
    assert refused.returncode == 2 and "already holds a sweep" in refused.stderr

    again = run_cli("cvexp-train", *command, "skip_completed=true", cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    after = {p: b for p, b in snapshot(done).items() if p.name != "train.log"}
    assert after == before  # the finished job, its .hydra record included, is as it was
    assert "skipping" in (done / "train.log").read_text()
    assert "continuing the interrupted job" in (cut / "train.log").read_text()
    assert json.loads((cut / "summary.json").read_text())["status"] == "completed"
    assert "2 of 2 jobs finished" in again.stderr


@pytest.mark.slow
def test_an_optuna_study_resumes_with_the_same_command(tmp_path: Path, tiny) -> None:
    pytest.importorskip(
        "hydra_plugins.hydra_optuna_sweeper", reason="the optuna extra is not installed"
    )
    import optuna

    write_batches_dir(tmp_path / "data", tiny)
    command = [
        "-m",
        "hparams_search=vgg16_bn_optuna",
        "hydra.sweeper.sampler.n_startup_trials=3",
        "optimized_metric=val/loss",
        "optimized_mode=min",
        "trainer.fast_dev_run=true",
        *TINY,
    ]
    first = run_cli("cvexp-train", *command, "hydra.sweeper.n_trials=2", cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    study_dir = tmp_path / "multirun" / "optuna" / "vgg16_bn_lr_wd"
    again = run_cli("cvexp-train", *command, "hydra.sweeper.n_trials=3", cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2 of 3 trials finished; running 1 more" in again.stdout + again.stderr
    study = optuna.load_study(
        study_name="vgg16_bn_lr_wd", storage=f"sqlite:///{study_dir}/optuna.db"
    )
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    summaries = [json.loads(p.read_text()) for p in study_dir.glob("*/summary.json")]
    best = [s["optimized_metric"]["best"] for s in summaries]
    assert len(best) == 3 and sorted(t.value for t in study.trials) == pytest.approx(sorted(best))
    result = yaml.safe_load((study_dir / "optimization_results.yaml").read_text())
    assert result["best_value"] == pytest.approx(min(best))
