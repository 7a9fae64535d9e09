"""Your own configs (README, "Your own configs"): a folder named by CVEXP_CONFIG_DIR on the
search path of every command, and the optional `local` group of a machine's settings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from cvexp.runtime.config import compose_config
from cvexp.runtime.config_dir import ENV_VAR, PROVIDER
from tests.conftest import (
    CLI_TINY,
    TEST_CONF,
    TINY_MODEL,
    assert_one_clear_error,
    run_cli,
    write_batches_dir,
)

# the user's experiment: their own model (a file of their folder too), a seed and tags
MY_EXPERIMENT = """\
# @package _global_
defaults:
  - override /model: my_tiny

seed: 7
tags: [from_experiment]
trainer:
  max_epochs: 1
"""
# the user's model: the tests' tiny VGG, built on cvexp's vgg16_bn as a model file of conf/ is
MY_TINY = (TEST_CONF / "model" / "tiny.yaml").read_text()


def write_local(folder: Path, settings: dict) -> Path:
    """`folder`/local/default.yaml holding `settings`: the config's own keys, with no
    `# @package` line (the commands load it as `local@_global_`)."""
    path = folder / "local" / "default.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(settings))
    return path


@pytest.fixture
def my_configs(tmp_path: Path) -> Path:
    """A user's config folder outside the package: experiment/my_experiment.yaml and
    model/my_tiny.yaml."""
    folder = tmp_path / "my-configs"
    (folder / "experiment").mkdir(parents=True)
    (folder / "experiment" / "my_experiment.yaml").write_text(MY_EXPERIMENT)
    (folder / "model").mkdir()
    (folder / "model" / "my_tiny.yaml").write_text(MY_TINY)
    return folder


def sources(cfg) -> list[tuple[str, str]]:
    return [(s["provider"], s["path"]) for s in cfg.hydra.runtime.config_sources]


@pytest.mark.parametrize("value", [None, "", "  "])
def test_unset_or_empty_config_dir_adds_nothing(tmp_path: Path, monkeypatch, value) -> None:
    if value is not None:
        monkeypatch.setenv(ENV_VAR, value)
    cfg = compose_config("train", [], tmp_path / "run")
    assert [provider for provider, _ in sources(cfg)] == ["hydra", "main", "schema"]
    assert cfg.seed == 42 and cfg.trainer.max_epochs == 60


def test_config_dir_comes_after_cvexp_configs_and_beside_a_searchpath_override(
    tmp_path: Path, monkeypatch, my_configs: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(ENV_VAR, my_configs.name)  # relative: taken from the current directory
    cfg = compose_config(
        "train", [f"hydra.searchpath=[file://{TEST_CONF}]", "model=tiny"], tmp_path / "run"
    )
    assert sources(cfg)[1:4] == [
        ("main", "cvexp.conf"),
        (PROVIDER, str(my_configs)),
        ("hydra.searchpath in command-line", str(TEST_CONF)),
    ]
    cfg = compose_config("train", ["experiment=my_experiment"], tmp_path / "run")
    assert cfg.hydra.runtime.choices.model == "my_tiny"
    assert cfg.model.net.width == 0.03125 and cfg.seed == 7 and cfg.trainer.max_epochs == 1


def test_local_settings_come_after_the_experiment_and_before_debug(
    tmp_path: Path, monkeypatch, my_configs: Path
) -> None:
    monkeypatch.setenv(ENV_VAR, str(my_configs))
    write_local(my_configs, {"tags": ["from_local"], "trainer": {"max_epochs": 5}})
    cfg = compose_config("train", ["experiment=my_experiment"], tmp_path / "run")
    assert list(cfg.tags) == ["from_local"] and cfg.trainer.max_epochs == 5 and cfg.seed == 7
    cfg = compose_config("train", ["experiment=my_experiment", "debug=default"], tmp_path / "run")
    assert cfg.trainer.max_epochs == 1  # a debug run stays short
    cfg = compose_config("train", ["trainer.max_epochs=3"], tmp_path / "run")
    assert cfg.trainer.max_epochs == 3  # the command line wins


@pytest.mark.parametrize("command", ["eval", "visualize", "predict", "export", "attention"])
def test_every_command_reads_the_local_settings_before_its_own_keys(
    tmp_path: Path, monkeypatch, command: str
) -> None:
    folder = tmp_path / "my-configs"
    local = {"paths": {"log_dir": str(tmp_path / "logs")}, "data": {"root": "/datasets/cifar"}}
    write_local(folder, {**local, "trainer": {"accelerator": "cpu", "devices": 4}})
    monkeypatch.setenv(ENV_VAR, str(folder))
    cfg = compose_config(command, [], tmp_path / "run")
    assert cfg.paths.log_dir == str(tmp_path / "logs")
    assert cfg.hydra.run.dir.startswith(str(tmp_path / "logs" / "outputs"))
    if command == "eval":
        assert cfg.trainer.accelerator == "cpu" and cfg.trainer.devices == 1  # eval's own key


def test_a_config_dir_that_is_not_a_folder_is_refused(tmp_path: Path) -> None:
    for value in (tmp_path / "missing", tmp_path / "file.yaml"):
        if value.suffix:
            value.write_text("seed: 1\n")
        result = run_cli("cvexp-train", "--cfg", "job", cwd=tmp_path, env={ENV_VAR: str(value)})
        assert_one_clear_error(result, f"cvexp-train: error: {ENV_VAR}={value} is not a folder")
        assert result.returncode == 2


def test_an_experiment_hydra_cannot_find_is_refused_not_ignored(tmp_path: Path) -> None:
    result = run_cli("cvexp-train", "experiment=my_experiment", "--cfg", "job", cwd=tmp_path)
    assert_one_clear_error(result, "Could not find 'experiment/my_experiment'")


@pytest.mark.slow
def test_own_experiment_model_and_local_settings_through_the_console_scripts(
    tmp_path: Path, my_configs: Path, tiny
) -> None:
    """A new user's folder outside the package: cvexp-train composes and trains their
    experiment and model, with their machine's settings applied last; cvexp-predict reads the
    same local file, whose training keys it does not use."""
    data_root = write_batches_dir(tmp_path / "datasets" / "cifar10", tiny)
    logs = tmp_path / "logs"
    write_local(
        my_configs,
        {
            "data": {"root": str(data_root), "num_workers": 0},
            "paths": {"log_dir": str(logs)},
            "trainer": {"accelerator": "cpu"},
            "tags": ["from_local"],
        },
    )
    env = {ENV_VAR: str(my_configs)}
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    args = [o for o in CLI_TINY if o not in TINY_MODEL]  # the model comes from the experiment

    job = run_cli(
        "cvexp-train", "experiment=my_experiment", *args, "--cfg", "job", cwd=cwd, env=env
    )
    assert job.returncode == 0, job.stdout + job.stderr
    composed = yaml.safe_load(job.stdout)
    assert composed["seed"] == 7 and composed["tags"] == ["from_local"]
    assert composed["model"]["net"]["width"] == 0.03125

    result = run_cli("cvexp-train", "experiment=my_experiment", *args, cwd=cwd, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (cwd / "outputs").exists()  # paths.log_dir of the local file
    (run_dir,) = [p for p in (logs / "outputs").glob("*/*") if p.is_dir()]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["model"] == "my_tiny"
    assert summary["seed"] == 7 and summary["tags"] == ["from_local"]
    hydra_record = yaml.safe_load((run_dir / ".hydra" / "hydra.yaml").read_text())["hydra"]
    assert hydra_record["runtime"]["choices"]["experiment"] == "my_experiment"
    assert {"provider": PROVIDER, "path": str(my_configs), "schema": "file"} in hydra_record[
        "runtime"
    ]["config_sources"]

    image = cwd / "cat.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(image)
    result = run_cli(
        "cvexp-predict",
        f"ckpt_path={summary['best_model_path']}",
        f"inputs={image}",
        cwd=cwd,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert list((logs / "outputs" / "predict").glob("*/*/predictions.csv"))
