"""Finishing sweeps: skip_completed=true on a grid sweep, and an Optuna study that resumes."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from cvexp.run_record import RunDir
from tests.conftest import CLI_TINY, assert_one_clear_error, run_cli, snapshot, write_batches_dir

TINY = [*CLI_TINY, "trainer.max_epochs=2"]
README = Path(__file__).resolve().parents[1] / "README.md"
STUDY = "vgg16_bn_lr_wd"  # hydra.sweeper.study_name in conf/hparams_search/vgg16_bn_optuna.yaml


def needs_optuna():
    """The optuna module; the test is skipped without the optional extra."""
    pytest.importorskip(
        "hydra_plugins.hydra_optuna_sweeper", reason="the optuna extra is not installed"
    )
    import optuna

    return optuna


def optuna_command(*overrides: str) -> list[str]:
    """An Optuna search of one-batch trials on the tiny data in ./data."""
    return [
        "-m",
        "hparams_search=vgg16_bn_optuna",
        "hydra.sweeper.sampler.n_startup_trials=3",
        *overrides,
        "trainer.fast_dev_run=true",
        *TINY,
    ]


def trial_folders(study_dir: Path) -> list[str]:
    """The study folder's trial folders, by name."""
    return sorted(p.name for p in study_dir.iterdir() if RunDir(p).is_run())


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
    first_record = RunDir(sweep).sweep_record_path.read_bytes()

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
    # Hydra wrote a new multirun.yaml; the first run's is kept, byte for byte
    assert b"skip_completed=true" in RunDir(sweep).sweep_record_path.read_bytes()
    kept = sorted(RunDir(sweep).sweep_history_dir.glob("*.yaml"))
    assert [p.read_bytes() for p in kept] == [first_record]
    assert sorted(p.name for p in sweep.iterdir() if RunDir(p).is_run()) == [done.name, cut.name]


@pytest.mark.slow
def test_an_optuna_study_resumes_with_the_same_command(tmp_path: Path, tiny) -> None:
    optuna = needs_optuna()
    write_batches_dir(tmp_path / "data", tiny)
    command = optuna_command("optimized_metric=val/loss", "optimized_mode=min")
    first = run_cli("cvexp-train", *command, "hydra.sweeper.n_trials=2", cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    study_dir = tmp_path / "multirun" / "optuna" / STUDY
    assert trial_folders(study_dir)[0].startswith("0_")
    again = run_cli("cvexp-train", *command, "hydra.sweeper.n_trials=4", cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2 of 4 trials finished; running 2 more" in again.stdout + again.stderr
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{study_dir}/optuna.db")
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 4
    summaries = [json.loads(p.read_text()) for p in study_dir.glob("*/summary.json")]
    best = [s["optimized_metric"]["best"] for s in summaries]
    assert len(best) == 4 and sorted(t.value for t in study.trials) == pytest.approx(sorted(best))
    result = yaml.safe_load((study_dir / "optimization_results.yaml").read_text())
    assert result["best_value"] == pytest.approx(min(best))
    # the continued trials' folders go on from the first run's (0_, 1_, then 2_, 3_): each
    # folder is numbered as Optuna numbers its trial, and holds that trial's values
    folders = trial_folders(study_dir)
    assert [int(name.split("_", 1)[0]) for name in folders] == [0, 1, 2, 3], folders
    for name, trial in zip(folders, study.trials, strict=True):
        overrides = dict(o.split("=", 1) for o in RunDir(study_dir / name).recorded_overrides())
        lr = float(overrides["model.optimizer.lr"])
        assert lr == pytest.approx(trial.params["model.optimizer.lr"]), name


def readme_command(start: str) -> list[str]:
    """The arguments of the README's command line that starts with `start`."""
    (line,) = [line for line in README.read_text().splitlines() if line.startswith(start)]
    return shlex.split(line)[1:]


@pytest.mark.slow
def test_an_optuna_study_keeps_its_objective(tmp_path: Path, tiny) -> None:
    optuna = needs_optuna()
    write_batches_dir(tmp_path / "data", tiny)
    first = run_cli("cvexp-train", *optuna_command("hydra.sweeper.n_trials=1"), cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    study_dir = tmp_path / "multirun" / "optuna" / STUDY
    storage = f"sqlite:///{study_dir}/optuna.db"
    study = optuna.load_study(study_name=STUDY, storage=storage)
    assert study.user_attrs["optimized_metric"] == "val/acc"  # a new study records its metric
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    before = snapshot(study_dir)

    # another metric of the same direction was added silently; another direction raised
    # "ValueError: Cannot overwrite study direction" from Optuna
    for other in (
        ["optimized_metric=train/acc"],
        ["optimized_metric=val/loss", "optimized_mode=min"],
    ):
        command = optuna_command(*other, "hydra.sweeper.n_trials=2")
        refused = run_cli("cvexp-train", *command, cwd=tmp_path)
        assert refused.returncode == 2
        assert_one_clear_error(
            refused,
            f"optimized_metric=val/acc optimized_mode=max, or start another study with "
            f"hydra.sweeper.study_name={STUDY}_",
        )
        assert len(re.findall(r"error:", refused.stderr)) == 1, refused.stderr
        assert snapshot(study_dir) == before  # no trial ran, nothing was written

    # the README's example, as written, starts its own study
    readme = readme_command(
        "cvexp-train -m hparams_search=vgg16_bn_optuna optimized_metric=val/loss"
    )
    command = [*readme, "hydra.sweeper.n_trials=1", "trainer.fast_dev_run=true", *TINY]
    example = run_cli("cvexp-train", *command, cwd=tmp_path)
    assert example.returncode == 0, example.stdout + example.stderr
    (name,) = [o.split("=", 1)[1] for o in readme if o.startswith("hydra.sweeper.study_name=")]
    study = optuna.load_study(
        study_name=name, storage=f"sqlite:///{tmp_path}/multirun/optuna/{name}/optuna.db"
    )
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert study.user_attrs["optimized_metric"] == "val/loss"
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE]
    assert snapshot(study_dir) == before


def continue_study_config(tmp_path: Path, *, metric: str, mode: str):
    """The config ContinueStudy reads: a stored study in tmp_path/optuna.db, n_trials=5."""
    return OmegaConf.create(
        {
            "optimized_metric": metric,
            "optimized_mode": mode,
            "hydra": {
                "sweeper": {
                    "storage": f"sqlite:///{tmp_path}/optuna.db",
                    "study_name": "older",
                    "direction": f"{mode}imize",
                    "n_trials": 5,
                },
                "callbacks": {
                    "continue_study": {
                        "_target_": "cvexp.runtime.optuna_study.ContinueStudy",
                        "first_trial": 0,
                    }
                },
                "overrides": {"hydra": []},
            },
        }
    )


@pytest.mark.filterwarnings("ignore:.*is experimental")  # Optuna's create_trial and add_trial
def test_a_study_of_older_code_is_continued_when_its_direction_matches(tmp_path, capsys) -> None:
    optuna = needs_optuna()
    from cvexp.runtime.optuna_study import ContinueStudy

    storage = f"sqlite:///{tmp_path}/optuna.db"
    older = optuna.create_study(study_name="older", storage=storage, direction="maximize")
    older.add_trial(optuna.trial.create_trial(value=0.5))  # no user attribute: older code

    with pytest.raises(SystemExit) as refused:
        ContinueStudy().on_multirun_start(
            continue_study_config(tmp_path, metric="val/loss", mode="min")
        )
    assert refused.value.code == 2
    error = capsys.readouterr().err
    assert "optimized_mode=max" in error and "hydra.sweeper.study_name=" in error, error
    assert (
        "optimized_metric" not in optuna.load_study(study_name="older", storage=storage).user_attrs
    )

    config = continue_study_config(tmp_path, metric="val/acc", mode="max")
    ContinueStudy().on_multirun_start(config)
    assert config.hydra.sweeper.n_trials == 4
    # from now on the study remembers the metric it is continued with
    stored = optuna.load_study(study_name="older", storage=storage)
    assert stored.user_attrs["optimized_metric"] == "val/acc"
    # its new trials' folders are numbered on from its first trial's
    assert "++hydra.callbacks.continue_study.first_trial=1" in config.hydra.overrides.hydra
