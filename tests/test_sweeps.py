"""Sweeps and cvexp-compare: real multiruns as subprocesses, the table, the graph, failing jobs."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from cvexp.comparison import compare
from cvexp.errors import UserError
from tests.conftest import CLI_TINY, run_cli, snapshot, write_batches_dir

CONF = Path(__file__).resolve().parents[1] / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
SWEEPS = sorted(p.stem for p in (CONF / "sweep").glob("*.yaml"))
TINY = [*CLI_TINY, "trainer.max_epochs=2"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny) -> tuple[Path, Path]:
    """`cvexp-train -m model.net.batch_norm=false,true seed=1,2` (the tiny model): (cwd, sweep dir)."""
    cwd = tmp_path_factory.mktemp("sweep")
    write_batches_dir(cwd / "data", tiny)
    result = run_cli(
        "cvexp-train", "-m", *TINY, "model.net.batch_norm=false,true", "seed=1,2", cwd=cwd
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (sweep_dir,) = list((cwd / "multirun").glob("*/*"))
    return cwd, sweep_dir


@pytest.mark.slow
def test_sweep_jobs_get_readable_directories(sweep) -> None:
    _, sweep_dir = sweep
    jobs = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir())
    # the job number, then the job's overrides (paths and presets left out)
    expected = [
        "model.net.batch_norm-False+seed-1",  # Hydra writes the swept booleans capitalised
        "model.net.batch_norm-False+seed-2",
        "model.net.batch_norm-True+seed-1",
        "model.net.batch_norm-True+seed-2",
    ]
    assert len(jobs) == 4
    for number, (job, overrides) in enumerate(zip(jobs, expected, strict=True)):
        assert job == f"{number}_{overrides}"
        assert "data.root" not in job and "searchpath" not in job
    for job in jobs:
        for part in (".hydra", "checkpoints", "tensorboard", "summary.json"):
            assert (sweep_dir / job / part).exists(), f"{job}/{part}"


@pytest.mark.slow
def test_compare_writes_the_table_and_the_graph(sweep) -> None:
    cwd, sweep_dir = sweep
    result = run_cli("cvexp-compare", str(sweep_dir), cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert "| configuration |" in result.stdout  # the printed table
    with (sweep_dir / "results.csv").open() as f:
        rows = {row["configuration"].lower(): row for row in csv.DictReader(f)}
    assert set(rows) == {"model.net.batch_norm=false", "model.net.batch_norm=true"}
    for configuration, row in rows.items():
        assert row["n"] == "2"
        prefix = configuration.replace("=", "-") + "+"
        summaries = [
            json.loads((job / "summary.json").read_text())
            for job in sweep_dir.iterdir()
            if job.name.lower().partition("_")[2].startswith(prefix)
        ]
        assert len(summaries) == 2
        for key in ("best_val_acc", "test_acc"):
            values = [s[key] for s in summaries]
            assert float(row[f"{key}_mean"]) == pytest.approx(statistics.fmean(values))
            assert float(row[f"{key}_std"]) == pytest.approx(statistics.stdev(values))
    # BN adds a scale and a shift per channel and removes the conv biases: the tiny VGG's
    # 8 convs have 2 + 4 + 8 + 8 + 16 * 4 = 86 channels
    off, on = rows["model.net.batch_norm=false"], rows["model.net.batch_norm=true"]
    assert (float(on["params_M"]) - float(off["params_M"])) * 1e6 == pytest.approx(86)
    with Image.open(sweep_dir / "convergence.png") as image:
        image.load()
        assert image.size[0] > 1000
    assert "± " in (sweep_dir / "results.md").read_text()


@pytest.mark.slow
def test_compare_reads_single_runs_and_other_metrics(sweep, tmp_path: Path) -> None:
    _, sweep_dir = sweep
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir())
    out = compare([jobs[0], jobs[2]], out_dir=tmp_path / "ab", metric="val/loss")
    assert len(out["rows"]) == 2
    assert all(row["best_val/loss_mean"] is not None for row in out["rows"])
    assert (tmp_path / "ab" / "convergence.png").is_file()


@pytest.mark.slow
def test_a_failing_job_does_not_stop_the_sweep(tmp_path: Path, tiny) -> None:
    write_batches_dir(tmp_path / "data", tiny)
    # depth 17 is no VGG: that job fails when its network is built, the other one trains
    result = run_cli("cvexp-train", "-m", "model.net.depth=17,16", *TINY, cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "VGG depth must be one of" in result.stderr
    (sweep_dir,) = list((tmp_path / "multirun").glob("*/*"))
    statuses = {
        p.name: json.loads((p / "summary.json").read_text())["status"]
        for p in sweep_dir.iterdir()
        if p.is_dir()
    }
    assert sorted(statuses.values()) == ["completed", "failed"]
    assert next(s for name, s in statuses.items() if "model.net.depth-17" in name) == "failed"
    assert "1 of 2 jobs finished" in result.stderr and "  failed: " in result.stderr
    table = compare([sweep_dir])["rows"]
    assert {row["status"] for row in table} == {"1 failed", "1 completed"}


def compose_train(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="cvexp.conf", version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    GlobalHydra.instance().clear()
    return cfg


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_is_a_single_run_preset(experiment: str) -> None:
    cfg = compose_train(f"experiment={experiment}")
    assert cfg.hydra.mode is None and cfg.hydra.sweeper.params is None
    assert "_target_" in cfg.model.net
    if experiment == "vgg16_bn_gpu_fast":
        assert cfg.trainer.precision == "bf16-mixed"
        assert cfg.model.channels_last and cfg.data.on_device and cfg.data.batch_size == 512
        # the fast trainers' recipe: lr scaled for batch 512, no dropout, label smoothing, flip TTA
        assert cfg.model.compile and cfg.model.optimizer.lr == 0.4 and cfg.model.net.dropout == 0
        assert cfg.model.label_smoothing == 0.2 and cfg.tta == "flip"


@pytest.mark.parametrize("sweep_name", SWEEPS)
def test_every_sweep_is_a_multirun_over_seeds(sweep_name: str) -> None:
    cfg = compose_train(f"sweep={sweep_name}")
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    params = cfg.hydra.sweeper.params
    # configurations over seeds, or the folds of one configuration's cross-validation
    assert ("seed" in params and len(params) >= 2) or ("data.fold" in params and cfg.data.folds)
    for job in (cfg.hydra.sweeper.params.get("experiment") or "").split(","):
        if job:  # a sweep over recipes names experiments that exist
            assert job in EXPERIMENTS


@pytest.mark.slow
def test_a_sweep_preset_runs_as_a_sweep_without_dash_m(tmp_path: Path, tiny) -> None:
    write_batches_dir(tmp_path / "data", tiny)
    result = run_cli(
        "cvexp-train",
        "sweep=bn_vs_nobn",
        *TINY,
        "trainer.max_epochs=1",
        "hydra.sweeper.params.model=tiny",
        "hydra.sweeper.params.seed=1",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (sweep_dir,) = list((tmp_path / "multirun").glob("*/*"))
    (job,) = [p for p in sweep_dir.iterdir() if p.is_dir()]
    assert json.loads((job / "summary.json").read_text())["status"] == "completed"
    assert not (tmp_path / "outputs").exists()  # not silently a single run


@pytest.mark.slow
def test_a_sweep_into_an_existing_sweep_dir_is_refused(sweep) -> None:
    cwd, sweep_dir = sweep
    before = snapshot(sweep_dir)
    result = run_cli(
        "cvexp-train", "-m", *TINY, "seed=3,4", f"hydra.sweep.dir={sweep_dir}", cwd=cwd
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "already holds a sweep" in result.stderr and "Traceback" not in result.stderr
    assert snapshot(sweep_dir) == before


@pytest.mark.parametrize("bad", ["missing", "empty"])
def test_compare_on_nothing_is_a_clear_error(tmp_path: Path, bad: str) -> None:
    target = tmp_path / bad
    if bad == "empty":
        target.mkdir()
    with pytest.raises(UserError, match="run directory or a sweep directory"):
        compare([target])  # the console script's message: test_bad_inputs.py


def test_optuna_search_runs_three_trials(tmp_path: Path, tiny) -> None:
    pytest.importorskip(
        "hydra_plugins.hydra_optuna_sweeper", reason="the optuna extra is not installed"
    )
    write_batches_dir(tmp_path / "data", tiny)
    result = run_cli(
        "cvexp-train",
        "-m",
        "hparams_search=vgg16_bn_optuna",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.sampler.n_startup_trials=3",
        "trainer.fast_dev_run=true",
        *TINY,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (sweep_dir,) = list((tmp_path / "multirun").glob("*/*"))
    summaries = [json.loads(p.read_text()) for p in sweep_dir.glob("*/summary.json")]
    assert len(summaries) == 3
    assert all(s["status"] == "completed" and s["best_val_acc"] is not None for s in summaries)
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(s["best_val_acc"] for s in summaries))
