"""cvexp/trainer.py and its presets: Lightning's debugging keys compose
without `+` and reach the Trainer; the GPU presets turn on cuDNN's autotuner; trainer=mps;
debug=profiler and debug=overfit on real tiny runs."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.profilers import SimpleProfiler

from cvexp.classifier import build_classifier
from cvexp.runtime.config import compose_config, register_resolvers
from cvexp.trainer import build_trainer
from cvexp.training import train
from tests.conftest import CLI_TINY, run_cli, write_batches_dir


@pytest.fixture
def compose_preset(tmp_path: Path):
    """The real train config with only the given overrides (no CPU settings on top)."""
    register_resolvers()

    def _compose(*overrides: str):
        return compose_config("train", list(overrides), tmp_path / "run")

    yield _compose
    GlobalHydra.instance().clear()


def test_debugging_keys_compose_without_plus_and_reach_the_trainer(
    compose_train, monkeypatch
) -> None:
    # Lightning sets torch.backends.cudnn.benchmark process-wide: restored after the test
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)
    cfg = compose_train(
        "trainer.profiler=simple",
        "trainer.detect_anomaly=true",
        "trainer.overfit_batches=2",
        "trainer.benchmark=true",
    )
    trainer = build_trainer(cfg)
    assert isinstance(trainer.profiler, SimpleProfiler)
    assert trainer._detect_anomaly is True
    assert trainer.overfit_batches == 2
    assert torch.backends.cudnn.benchmark is True


def test_the_debugging_keys_default_to_lightnings_defaults(compose_preset) -> None:
    trainer = compose_preset().trainer
    assert trainer.profiler is None
    assert trainer.detect_anomaly is False
    assert trainer.overfit_batches == 0.0
    assert trainer.benchmark is None


@pytest.mark.parametrize(
    "overrides", [["trainer=gpu"], ["trainer=ddp"], ["experiment=vgg16_bn_gpu_fast"]]
)
def test_gpu_presets_turn_on_cudnns_autotuner(compose_preset, overrides: list[str]) -> None:
    assert compose_preset(*overrides).trainer.benchmark is True


@pytest.mark.parametrize("preset", ["cpu", "ddp_cpu", "mps"])
def test_other_presets_leave_the_autotuner_alone(compose_preset, preset: str) -> None:
    assert compose_preset(f"trainer={preset}").trainer.benchmark is None


def test_mps_preset_composes_for_one_apple_gpu_in_full_precision(compose_preset) -> None:
    trainer = compose_preset("trainer=mps").trainer
    assert (trainer.accelerator, trainer.devices, trainer.precision) == ("mps", 1, "32-true")
    assert trainer.strategy == "auto"  # MPS has no DDP


class BatchRecorder(Callback):
    """The labels of every training and validation batch, per epoch."""

    def __init__(self) -> None:
        self.train: dict[int, list[list[int]]] = {}
        self.val: dict[int, list[list[int]]] = {}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch: Any, batch_idx) -> None:
        images, labels = batch
        assert images.shape[1:] == (3, 32, 32)
        self.train.setdefault(trainer.current_epoch, []).append(labels.tolist())

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module, batch: Any, *_) -> None:
        self.val.setdefault(trainer.current_epoch, []).append(batch[1].tolist())


def test_overfit_batches_trains_on_the_same_whole_batches_every_epoch(compose_train) -> None:
    """Lightning replaces a loader's sampler that is not a SequentialSampler by one over
    single images: the DataModule's overfit loaders must keep their whole batches."""
    cfg = compose_train(
        "trainer.overfit_batches=2", "trainer.max_epochs=3", "logger=none", "test=false"
    )
    recorder = BatchRecorder()
    trainer = build_trainer(cfg, [recorder])
    trainer.fit(build_classifier(cfg.model), datamodule=instantiate(cfg.data))
    batch = cfg.data.batch_size
    first = recorder.train[0]
    assert [len(labels) for labels in first] == [batch, batch]
    assert len({label for labels in first for label in labels}) > 2  # shuffled, not one class
    assert recorder.train == {0: first, 1: first, 2: first}
    assert all([len(labels) for labels in v] == [batch, batch] for v in recorder.val.values())


def test_debug_profiler_writes_its_report_into_the_run_dir(tmp_path: Path, tiny) -> None:
    write_batches_dir(tmp_path / "data", tiny)
    result = run_cli("cvexp-train", *CLI_TINY, "debug=profiler", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    (run_dir,) = [p for p in (tmp_path / "debug").glob("*/*") if p.is_dir()]
    report = run_dir / "fit-profile.txt"
    assert report.is_file(), sorted(p.name for p in run_dir.iterdir())
    assert "FIT Profiler Report" in report.read_text()
    assert "run_training_batch" in report.read_text()


def test_debug_overfit_learns_its_few_batches(compose_train, tmp_path: Path) -> None:
    """The tiny net learns 2 batches of 8 images: train/acc 0.94 after 20 epochs (measured),
    from 0.06 in the first; the held-out val/acc stays far below."""
    run_dir = tmp_path / "run"
    cfg = compose_train("debug=overfit", "trainer.max_epochs=20", run_dir=run_dir)
    assert cfg.callbacks.early_stopping is None
    assert (cfg.data.crop_padding, cfg.data.hflip, cfg.data.randaugment_ops) == (0, False, 0)
    train(cfg)
    with (run_dir / "metrics.csv").open() as f:
        train_acc = [float(row["train/acc"]) for row in csv.DictReader(f) if row["train/acc"]]
    assert len(train_acc) == 20
    assert train_acc[0] < 0.3
    assert max(train_acc[-3:]) >= 0.85, train_acc
