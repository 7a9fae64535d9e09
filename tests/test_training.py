"""End to end: train(cfg) on the real composed configs, the run-directory contract, TensorBoard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from cvexp.checkpoint import load_classifier
from cvexp.data import CIFAR10DataModule
from cvexp.run_record import SCHEMA_VERSION
from cvexp.training import train

SUMMARY_KEYS = {
    "status",
    "model",
    "params",
    "best_val_acc",
    "best_epoch",
    "test_acc",
    "epochs_run",
    "best_model_path",
    "train_seconds",
    "seed",
    "overrides",
    "versions",
    "device",
    "git_commit",
    "split",
}


def read_scalars(tb_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in a TensorBoard folder, read with tensorboard's own event reader."""
    events = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def read_hparams_metrics(tb_dir: Path) -> tuple[dict, list[str]]:
    """The hparams (session start) and the metric tags (experiment) of the HPARAMS tab."""
    events = EventAccumulator(str(tb_dir))
    events.Reload()
    content = events.PluginTagToContent("hparams")
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    hparams = {k: v for k, v in session.session_start_info.hparams.items()}
    return hparams, [m.name.tag for m in experiment.experiment.metric_infos]


@pytest.mark.parametrize("batch_norm", ["true", "false"])
def test_train_writes_the_run_contract(compose_train, tmp_path: Path, batch_norm: str) -> None:
    run_dir = tmp_path / "run"
    model = "tiny"
    cfg = compose_train(f"model.net.batch_norm={batch_norm}", "callbacks.early_stopping.patience=5")
    (run_dir / ".hydra").mkdir(parents=True)  # Hydra writes this in a real run (see test_cli)
    summary = train(cfg)

    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary, default=str))
    assert on_disk.keys() >= SUMMARY_KEYS
    assert on_disk["status"] == "completed"
    assert on_disk["model"] == model
    assert on_disk["epochs_run"] == 2
    assert on_disk["params"] == sum(
        p.numel() for p in load_classifier(on_disk["best_model_path"])[0].net.parameters()
    )
    assert set(on_disk["versions"]) == {"python", "torch", "lightning", "cvexp"}
    # the precision the Trainer really used, resolved (the config may name a resolver)
    assert on_disk["precision"] == "32-true"
    assert on_disk["schema_version"] == SCHEMA_VERSION
    assert on_disk["split"]["val_size"] == 40 and len(on_disk["split"]["val_indices_sha256"]) == 64

    checkpoints = run_dir / "checkpoints"
    assert (checkpoints / "last.ckpt").is_file()
    best = Path(on_disk["best_model_path"])
    assert best.parent == checkpoints and best.is_file()
    assert on_disk["tested_checkpoint"] == str(best)

    scalars = read_scalars(run_dir / "tensorboard")
    for tag in ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best", "test/acc", "lr"):
        assert tag in scalars, f"{tag} missing from TensorBoard: {sorted(scalars)}"
    assert len(scalars["val/acc"]) == 2  # one per epoch
    assert max(v for _, v in scalars["val/acc"]) == pytest.approx(on_disk["best_val_acc"])
    assert scalars["test/acc"][-1][1] == pytest.approx(on_disk["test_acc"])
    lrs = [v for _, v in scalars["lr"]]
    assert len(lrs) == 4 and len(set(lrs)) > 1  # stepped every batch

    hparams, metric_tags = read_hparams_metrics(run_dir / "tensorboard")
    assert {"hp/best_val_acc", "hp/test_acc"} <= set(metric_tags)
    assert hparams["model"].string_value == model
    hp_scalars = {tag: values[-1][1] for tag, values in scalars.items() if tag.startswith("hp/")}
    assert hp_scalars["hp/best_val_acc"] == pytest.approx(
        on_disk["best_val_acc"]
    )  # the real value, not -1


def test_the_tested_checkpoint_is_the_best_one(
    compose_train, tmp_path: Path, data_root: Path
) -> None:
    """test_acc in the summary equals a fresh evaluation of the best checkpoint, not of the last weights."""
    cfg = compose_train(
        "trainer.max_epochs=3", "trainer.limit_test_batches=null", "model.optimizer.lr=0.05"
    )
    summary = train(cfg)
    classifier, checkpoint = load_classifier(summary["best_model_path"])
    assert checkpoint["epoch"] == summary["best_epoch"]
    dm = CIFAR10DataModule(str(data_root), download=False, val_size=40, batch_size=8)
    dm.setup("test")
    correct = 0
    with torch.no_grad():
        for images, labels in dm.test_dataloader():
            x, y = dm.on_after_batch_transfer((images, labels), 0)
            correct += int((classifier(x).argmax(1) == y).sum())
    assert correct / len(dm.data.test_labels) == pytest.approx(summary["test_acc"])


def test_checkpoints_load_safely_and_rebuild_alone(compose_train) -> None:
    summary = train(compose_train("trainer.max_epochs=1"))
    raw = torch.load(summary["best_model_path"], map_location="cpu", weights_only=True)
    assert raw["net_config"]["_target_"] == "cvexp.models.vgg.VGG"
    assert raw["net_config"]["batch_norm"] is True
    classifier, _ = load_classifier(summary["best_model_path"])
    assert classifier(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_failed_run_writes_summary_and_keeps_earlier_runs(
    compose_train, tmp_path: Path, monkeypatch
) -> None:
    earlier = tmp_path / "earlier"
    train(compose_train("trainer.max_epochs=1", run_dir=earlier))
    before = {p: p.read_bytes() for p in earlier.rglob("*") if p.is_file()}

    def explode(self, batch, batch_idx):
        raise RuntimeError("boom")

    monkeypatch.setattr("cvexp.classifier.ImageClassifier.training_step", explode)
    failed = tmp_path / "failed"
    with pytest.raises(RuntimeError, match="boom"):
        train(compose_train("trainer.max_epochs=1", run_dir=failed))
    summary = json.loads((failed / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["test_acc"] is None
    assert {p: p.read_bytes() for p in earlier.rglob("*") if p.is_file()} == before


def test_early_stopping_is_reported(compose_train) -> None:
    # patience 0 with a threshold no run can reach: stops after the first validation
    summary = train(
        compose_train(
            "trainer.max_epochs=5",
            "callbacks.early_stopping.patience=0",
            "callbacks.early_stopping.min_delta=2.0",
        )
    )
    assert summary["status"] == "stopped_early"
    assert summary["epochs_run"] < 5


def test_interrupted_run_says_so(compose_train, tmp_path: Path, monkeypatch) -> None:
    def ctrl_c(self, batch, batch_idx):
        raise KeyboardInterrupt

    monkeypatch.setattr("cvexp.classifier.ImageClassifier.training_step", ctrl_c)
    with pytest.raises(
        (SystemExit, KeyboardInterrupt)
    ):  # Lightning turns Ctrl+C into exit status 1
        train(compose_train("trainer.max_epochs=1"))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "interrupted"


def test_speed_options_train_and_keep_checkpoints_portable(compose_train, tmp_path: Path) -> None:
    cfg = compose_train(
        "model.channels_last=true", "data.on_device=true", "trainer.fast_dev_run=true"
    )
    summary = train(cfg)
    assert summary["status"] == "completed"
    classifier, _ = load_classifier(summary["best_model_path"] or summary["last_model_path"])
    assert classifier(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_compile_mode_reaches_torch_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    """model.compile_mode is torch.compile's mode (reduce-overhead: CUDA graphs)."""
    from cvexp.classifier import prepare_net
    from cvexp.models.vgg import VGG

    modes: list[str | None] = []

    def recording_compile(fn, *args, **kwargs):
        modes.append(kwargs.get("mode"))
        return fn

    monkeypatch.setattr(torch, "compile", recording_compile)
    prepare_net(VGG(depth=11), compile=True, compile_mode="reduce-overhead")
    prepare_net(VGG(depth=11), compile=True)
    assert modes == ["reduce-overhead", None]


def test_compile_keeps_parameter_names_and_on_device_needs_no_workers(data_root: Path) -> None:
    from cvexp.classifier import prepare_net
    from cvexp.errors import UserError
    from cvexp.models.vgg import VGG

    names = list(VGG(depth=11).state_dict())
    assert list(prepare_net(VGG(depth=11), compile=True).state_dict()) == names
    with pytest.raises(UserError, match=r"model\.compile_mode=fast is not a torch\.compile mode"):
        prepare_net(VGG(depth=11), compile=True, compile_mode="fast")
    with pytest.raises(UserError, match=r"data\.num_workers=0"):
        CIFAR10DataModule(str(data_root), on_device=True, num_workers=2)
