"""DDP inside Hydra (single runs and sweeps), resume in place, atomic checkpoints."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cvexp import trainer as trainer_module
from cvexp.checkpoint import AtomicCheckpointIO, load_classifier
from cvexp.data import CIFAR10DataModule
from cvexp.errors import UserError
from cvexp.training import train
from tests.conftest import BIN, CLI_TINY, run_cli, write_batches_dir
from tests.test_bad_inputs import EXPLODING_LR

ROOT = Path(__file__).resolve().parents[1]
WITH_TESTS = {"PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
DDP = ["trainer=ddp_cpu", *CLI_TINY, "trainer.devices=2", "trainer.limit_test_batches=null"]


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


def val_acc_by_epoch(run_dir: Path) -> list[tuple[int, float]]:
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars("val/acc")]


@pytest.mark.slow
def test_ddp_single_run_uses_one_directory(tmp_path: Path, tiny) -> None:
    write_batches_dir(tmp_path / "data", tiny)
    result = run_cli("cvexp-train", *DDP, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    runs = [p for p in (tmp_path / "outputs").glob("*/*")]
    assert len(runs) == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["data", "outputs"]
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["status"] == "completed" and (runs[0] / "checkpoints" / "last.ckpt").is_file()
    # the DDP test (both ranks, no padded duplicates) equals one process evaluating the best checkpoint
    classifier, _ = load_classifier(summary["best_model_path"])
    dm = CIFAR10DataModule(str(tmp_path / "data"), download=False, val_size=40)
    dm.setup("test")
    with torch.no_grad():
        x = dm.data.test_images.permute(0, 3, 1, 2).float() / 255
        accuracy = (classifier(x).argmax(1) == dm.data.test_labels).float().mean().item()
    assert summary["test_acc"] == pytest.approx(accuracy)


@pytest.mark.slow
def test_ddp_sweep_makes_exactly_one_directory_per_job(tmp_path: Path, tiny) -> None:
    write_batches_dir(tmp_path / "data", tiny)
    result = run_cli("cvexp-train", "-m", *DDP, "seed=1,2", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "multirun"]
    (sweep,) = list((tmp_path / "multirun").glob("*/*"))
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert len(jobs) == 2 and len(list((tmp_path / "multirun").glob("*/*"))) == 1
    for job in jobs:
        assert json.loads((job / "summary.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_resume_continues_bit_exactly(tmp_path: Path, tiny) -> None:
    write_batches_dir(tmp_path / "data", tiny)
    common = [
        *CLI_TINY,
        "trainer.max_epochs=4",
        "trainer.deterministic=true",
        "callbacks.feature_maps=null",
    ]
    full = run_cli("cvexp-train", *common, "paths.log_dir=full", cwd=tmp_path)
    assert full.returncode == 0, full.stderr
    stop = ["+callbacks.stop._target_=tests.helpers.StopAfterEpochs", "+callbacks.stop.epochs=2"]
    first = run_cli(
        "cvexp-train", *common, *stop, "paths.log_dir=split", cwd=tmp_path, env=WITH_TESTS
    )
    assert first.returncode == 0, first.stderr
    (split_dir,) = list((tmp_path / "split" / "outputs").glob("*/*"))
    assert json.loads((split_dir / "summary.json").read_text())["epochs_run"] == 2
    resumed = run_cli(
        "cvexp-train",
        f"resume={split_dir}",
        "callbacks.stop.epochs=99",
        cwd=tmp_path,
        env=WITH_TESTS,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert list((tmp_path / "split" / "outputs").glob("*/*")) == [
        split_dir
    ]  # in place, no new directory
    (full_dir,) = list((tmp_path / "full" / "outputs").glob("*/*"))
    a = torch.load(full_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(split_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # every epoch's val/acc once, with the same values (last.ckpt is the epoch-end state)
    resumed_curve, full_curve = val_acc_by_epoch(split_dir), val_acc_by_epoch(full_dir)
    assert resumed_curve == full_curve and len(full_curve) == 4
    summary = json.loads((split_dir / "summary.json").read_text())
    assert summary["epochs_run"] == 4 and summary["status"] == "completed"
    # the run's record says it was resumed in place (and from which folder)
    assert f"resume='{split_dir}'" in summary["overrides"]
    assert list(
        (split_dir / ".hydra" / "history").glob("*/overrides.yaml")
    )  # the first record is kept


def test_resume_needs_a_run_with_a_checkpoint(tmp_path: Path) -> None:
    result = run_cli("cvexp-train", f"resume={tmp_path}", cwd=tmp_path)
    assert result.returncode == 2 and "is not a run directory" in result.stderr
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("[]\n")
    result = run_cli("cvexp-train", f"resume={tmp_path}", cwd=tmp_path)
    assert result.returncode == 2 and "has no checkpoints/last.ckpt" in result.stderr
    assert "Traceback" not in result.stderr


def test_more_devices_than_the_machine_has(tmp_path: Path, tiny) -> None:
    write_batches_dir(tmp_path / "data", tiny)
    result = run_cli(
        "cvexp-train", *CLI_TINY, "trainer=ddp", "trainer.accelerator=gpu", cwd=tmp_path
    )
    if torch.cuda.device_count() >= 2:
        pytest.skip("this machine has the GPUs")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "config could not be built" in result.stderr


def test_a_crash_while_writing_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "epoch": 1}, path)

    def crash_half_way(checkpoint, filepath):
        with open(filepath, "wb") as handle:
            handle.write(b"PK half a checkpoint")  # the disk fills up half-way through
        raise OSError("No space left on device")

    monkeypatch.setattr("lightning.fabric.plugins.io.torch_io._atomic_save", crash_half_way)
    with pytest.raises(UserError, match=r"Could not write the checkpoint .*No space left.*resume="):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "epoch": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no partial file left


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_resume_finishes(tmp_path: Path, tiny) -> None:
    write_batches_dir(tmp_path / "data", tiny)
    overrides = [
        *CLI_TINY,
        "trainer.limit_train_batches=null",
        "trainer.max_epochs=200",
        "callbacks.feature_maps=null",
    ]
    process = subprocess.Popen(
        [str(BIN / "cvexp-train"), *overrides],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    while (
        not list(tmp_path.glob("outputs/*/*/checkpoints/last.ckpt")) and time.monotonic() < deadline
    ):
        time.sleep(0.5)  # wait until at least one epoch has been checkpointed
    time.sleep(1.0)  # now in the middle of a later epoch
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 143, output
    (run_dir,) = list((tmp_path / "outputs").glob("*/*"))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    resumed = run_cli(
        "cvexp-train",
        f"resume={run_dir}",
        f"trainer.max_epochs={checkpoint['epoch'] + 2}",
        cwd=tmp_path,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_run"] == checkpoint["epoch"] + 2


def lr_by_step(run_dir: Path) -> dict[int, float]:
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return {e.step: e.value for e in events.Scalars("lr")}


@pytest.mark.slow
def test_train_on_to_more_epochs_replans_the_schedule_in_place(tmp_path: Path, tiny) -> None:
    """The two commands of the everyday path: a 1-epoch run, then `resume=` to 2 epochs."""
    write_batches_dir(tmp_path / "data", tiny)
    common = [*CLI_TINY, "trainer.deterministic=true", "callbacks.feature_maps=null"]
    first = run_cli("cvexp-train", *common, "hydra.run.dir=r1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    run_dir = tmp_path / "r1"
    done = json.loads((run_dir / "summary.json").read_text())
    assert done["status"] == "completed" and done["epochs_run"] == 1
    on = run_cli("cvexp-train", "resume=r1", "trainer.max_epochs=2", cwd=tmp_path)
    assert on.returncode == 0, on.stdout + on.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_run"] == 2
    assert summary["test_acc"] is not None
    assert [step for step, _ in val_acc_by_epoch(run_dir)][-1] > 0  # epoch 2 in the same curves
    # the rule: re-planned as if planned for 2 epochs from the start, from the step reached;
    # so from step 2 on, the learning rate is that of a run planned for 2 epochs
    planned = run_cli(
        "cvexp-train", *common, "trainer.max_epochs=2", "hydra.run.dir=r2", cwd=tmp_path
    )
    assert planned.returncode == 0, planned.stderr
    resumed_lr, planned_lr = lr_by_step(run_dir), lr_by_step(tmp_path / "r2")
    assert sorted(resumed_lr) == sorted(planned_lr) == [0, 1, 2, 3]
    for step in (2, 3):
        assert resumed_lr[step] == pytest.approx(planned_lr[step])
    assert resumed_lr[0] != pytest.approx(planned_lr[0])  # epoch 1 ran on the 1-epoch plan
    # fewer epochs than the run has done: one sentence, and the record is kept
    fewer = run_cli("cvexp-train", "resume=r1", "trainer.max_epochs=1", cwd=tmp_path)
    assert fewer.returncode == 2 and "has completed 2 epochs" in fewer.stderr
    assert "Traceback" not in fewer.stderr


@pytest.mark.slow
def test_a_failed_resume_keeps_the_result_and_records_the_attempt(tmp_path: Path, tiny) -> None:
    write_batches_dir(tmp_path / "data", tiny)
    first = run_cli("cvexp-train", *CLI_TINY, "hydra.run.dir=r1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    run_dir = tmp_path / "r1"
    result = json.loads((run_dir / "summary.json").read_text())
    record = {p.name: p.read_bytes() for p in (run_dir / ".hydra").glob("*.yaml")}
    # fails before training (no dataset there), then during training (the loss explodes)
    before = run_cli(
        "cvexp-train", "resume=r1", "trainer.max_epochs=3", "data.root=./nowhere", cwd=tmp_path
    )
    assert before.returncode == 2 and "No CIFAR-10 found" in before.stderr
    during = run_cli(
        "cvexp-train", "resume=r1", *EXPLODING_LR, "trainer.max_epochs=4", cwd=tmp_path
    )
    assert during.returncode == 2 and "The training loss became" in during.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    kept = {k: v for k, v in summary.items() if k != "attempts"}
    assert kept == result  # the completed result, unchanged
    assert [a["status"] for a in summary["attempts"]] == ["failed", "failed"]
    assert "No CIFAR-10 found" in summary["attempts"][0]["error"]
    assert "The training loss became" in summary["attempts"][1]["error"]
    assert {p.name: p.read_bytes() for p in (run_dir / ".hydra").glob("*.yaml")} == record
    # and an override that would make it another run is refused before anything is touched
    other = run_cli("cvexp-train", "resume=r1", "model=vit", cwd=tmp_path)
    assert other.returncode == 2 and "cannot change" in other.stderr


@pytest.mark.slow
def test_init_from_starts_a_new_run_from_weights_only(tmp_path: Path, tiny) -> None:
    write_batches_dir(tmp_path / "data", tiny)
    first = run_cli("cvexp-train", *CLI_TINY, "hydra.run.dir=r1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    best = json.loads((tmp_path / "r1" / "summary.json").read_text())["best_model_path"]
    source, _ = load_classifier(best)
    # a plain state dict of the net, as a training script elsewhere would save it
    torch.save(source.net.state_dict(), tmp_path / "net.pt")
    for weights in (best, str(tmp_path / "net.pt")):
        new = run_cli(
            "cvexp-train",
            *CLI_TINY,
            f"init_from={weights}",
            "test=false",
            "hydra.run.dir=from_" + Path(weights).stem,
            cwd=tmp_path,
        )
        assert new.returncode == 0, new.stdout + new.stderr
        run = tmp_path / f"from_{Path(weights).stem}"
        summary = json.loads((run / "summary.json").read_text())
        assert summary["init_from"]["path"] == str(Path(weights).resolve())
        assert summary["init_from"]["initialised_fresh"] == []
        assert summary["epochs_run"] == 1  # a fresh epoch counter: 1 of trainer.max_epochs=1
    # another head: one sentence naming init_from_strict=false, which keeps the backbone
    wider = ["model.net.head_width=32"]
    refused = run_cli("cvexp-train", *CLI_TINY, *wider, f"init_from={best}", cwd=tmp_path)
    assert refused.returncode == 2 and "init_from_strict=false" in refused.stderr
    assert "Traceback" not in refused.stderr
    kept = run_cli(
        "cvexp-train",
        *CLI_TINY,
        *wider,
        f"init_from={best}",
        "init_from_strict=false",
        "hydra.run.dir=head",
        cwd=tmp_path,
    )
    assert kept.returncode == 0, kept.stdout + kept.stderr
    fresh = json.loads((tmp_path / "head" / "summary.json").read_text())["init_from"]
    assert fresh["initialised_fresh"] and all(
        k.startswith("classifier.") for k in fresh["initialised_fresh"]
    )
    # another architecture altogether: refused
    vit = run_cli("cvexp-train", *CLI_TINY, "model=vit", f"init_from={best}", cwd=tmp_path)
    assert vit.returncode == 2 and "do not fit this network" in vit.stderr


@pytest.mark.slow
def test_a_copied_run_resumes_against_its_own_files(tmp_path: Path, tiny) -> None:
    write_batches_dir(tmp_path / "data", tiny)
    first = run_cli("cvexp-train", *CLI_TINY, "hydra.run.dir=original", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    shutil.copytree(tmp_path / "original", tmp_path / "copy")
    before = {p: p.read_bytes() for p in (tmp_path / "original").rglob("*") if p.is_file()}
    on = run_cli("cvexp-train", "resume=copy", "trainer.max_epochs=2", cwd=tmp_path)
    assert on.returncode == 0, on.stdout + on.stderr
    summary = json.loads((tmp_path / "copy" / "summary.json").read_text())
    copy = (tmp_path / "copy").resolve()
    for key in ("best_model_path", "last_model_path", "tested_checkpoint"):
        assert Path(summary[key]).is_relative_to(copy), (key, summary[key])
    assert summary["epochs_run"] == 2
    after = {p: p.read_bytes() for p in (tmp_path / "original").rglob("*") if p.is_file()}
    assert after == before  # the original run is untouched
    assert not list((tmp_path / "copy" / "checkpoints").glob("*-v1.ckpt"))


class LastCheckpointEpochs(Callback):
    """Records the epoch that checkpoints/last.ckpt holds at the start of every epoch."""

    def __init__(self, path: Path) -> None:
        self.path, self.epochs = path, []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.path.is_file():
            self.epochs.append(torch.load(self.path, weights_only=True)["epoch"])


def test_last_checkpoint_is_written_after_every_epoch_also_without_a_new_best(
    compose_train, monkeypatch
) -> None:
    # a monitor that never improves after epoch 0: only epoch 0 saves a top-k checkpoint
    cfg = compose_train(
        "trainer.max_epochs=4",
        "callbacks.model_checkpoint.monitor=epoch",
        "callbacks.model_checkpoint.mode=min",
        "callbacks.early_stopping=null",
    )
    recorder = LastCheckpointEpochs(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt")
    build = trainer_module.build_trainer
    monkeypatch.setattr(
        "cvexp.training.build_trainer", lambda c, extra: build(c, [*extra, recorder])
    )
    summary = train(cfg)
    assert summary["epochs_run"] == 4
    assert Path(summary["best_model_path"]).name.startswith("epoch000-")
    assert recorder.epochs == [0, 1, 2]  # the state after each finished epoch, not the best's
