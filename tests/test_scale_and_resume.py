"""DDP inside Hydra (single runs and sweeps), resume in place, atomic checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cvexp.checkpoint import AtomicCheckpointIO, load_classifier
from cvexp.data import CIFAR10DataModule
from cvexp.runtime.errors import UserError
from tests.conftest import BIN, CLI_TINY, run_cli, write_batches_dir

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
    (split_dir,) = list((tmp_path / "split").glob("*/*"))
    assert json.loads((split_dir / "summary.json").read_text())["epochs_run"] == 2
    resumed = run_cli(
        "cvexp-train",
        f"resume={split_dir}",
        "callbacks.stop.epochs=99",
        cwd=tmp_path,
        env=WITH_TESTS,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert list((tmp_path / "split").glob("*/*")) == [split_dir]  # in place, no new directory
    (full_dir,) = list((tmp_path / "full").glob("*/*"))
    a = torch.load(full_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(split_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # every epoch's val/acc, the same values; Lightning 2.6 validates the checkpoint's epoch once
    # more when it resumes, which writes that step twice with the same value (see the README)
    resumed_curve, full_curve = val_acc_by_epoch(split_dir), val_acc_by_epoch(full_dir)
    assert dict(resumed_curve) == dict(full_curve) and len(full_curve) == 4
    assert len(resumed_curve) == 5 and len(set(resumed_curve)) == 4
    summary = json.loads((split_dir / "summary.json").read_text())
    assert summary["epochs_run"] == 4 and summary["status"] == "completed"
    assert f"resume='{split_dir}'" in summary["overrides"] or any(
        "resume=" in o for o in summary["overrides"]
    )
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
