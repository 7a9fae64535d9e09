"""InterruptCheckpoint in a chain of interrupts and resumes: last.ckpt is always the newest
state, no last-vN.ckpt appears, and every epoch is trained (and logged) once."""

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

from tests.conftest import BIN, CLI_TINY, write_batches_dir

ROOT = Path(__file__).resolve().parents[1]
BATCHES = 6  # training batches per epoch


def run_until_signal(cwd: Path, args: list[str], step: int, sig: signal.Signals) -> str:
    """Run cvexp-train, stop it with `sig` when it reaches global step `step`; its output."""
    marker = cwd / f"paused-{step}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("CVEXP_DATA", None)
    process = subprocess.Popen(
        [
            str(BIN / "cvexp-train"),
            *args,
            "+callbacks.pause._target_=tests.helpers.PauseForSignal",
            f"+callbacks.pause.step={step}",
            f"+callbacks.pause.marker={marker}",
        ],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # Ctrl+C's default in the child even when this suite runs as a background job, whose
        # shell ignores SIGINT (inherited: Python then never raises KeyboardInterrupt)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(sig)
    output, _ = process.communicate(timeout=120)
    assert marker.exists(), output
    return output


def global_step(checkpoint: Path) -> int:
    return int(torch.load(checkpoint, map_location="cpu", weights_only=True)["global_step"])


@pytest.mark.slow
def test_interrupts_and_resumes_keep_last_ckpt_newest_and_train_each_epoch_once(
    tmp_path: Path, tiny
) -> None:
    write_batches_dir(tmp_path / "data", tiny)
    run = tmp_path / "run"
    first = [
        *CLI_TINY,
        f"trainer.limit_train_batches={BATCHES}",
        "callbacks.feature_maps=null",
        f"hydra.run.dir={run}",
    ]
    # Ctrl+C in the first epoch: last.ckpt at that step
    output = run_until_signal(tmp_path, first, step=2, sig=signal.SIGINT)
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted", output
    assert global_step(run / "checkpoints" / "last.ckpt") == 2
    # resume; SIGTERM again, still in the first epoch
    output = run_until_signal(tmp_path, [f"resume={run}"], step=4, sig=signal.SIGTERM)
    # SIGTERM stops at the next batch boundary: the paused batch still runs
    assert global_step(run / "checkpoints" / "last.ckpt") == 5, output
    # resume to the end of epoch 1, then on to 3 epochs (without the pausing callback)
    for epochs in (1, 3):
        done = subprocess.run(
            [
                str(BIN / "cvexp-train"),
                f"resume={run}",
                f"trainer.max_epochs={epochs}",
                "callbacks.pause=null",
            ],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert global_step(run / "checkpoints" / "last.ckpt") == epochs * BATCHES
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "last.ckpt" in names and not [n for n in names if n.startswith("last-v")], names
    assert len(names) == 2, names  # last.ckpt and the one best checkpoint
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_run"] == 3
    assert Path(summary["best_model_path"]).name in names
    assert summary["tested_checkpoint"] == summary["best_model_path"]
    # TensorBoard: one val/acc point per epoch, an epoch of steps apart
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    steps = [e.step for e in events.Scalars("val/acc")]
    assert len(steps) == 3 and steps[1] - steps[0] == steps[2] - steps[1] == BATCHES, steps


@pytest.mark.slow
def test_training_on_into_a_new_folder_records_that_runs_own_best(tmp_path: Path, tiny) -> None:
    """ckpt_path= from another run starts a new run: the summary's best is the tested one."""
    write_batches_dir(tmp_path / "data", tiny)
    common = [*CLI_TINY, "callbacks.feature_maps=null"]
    old = subprocess.run(
        [str(BIN / "cvexp-train"), *common, "hydra.run.dir=old"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert old.returncode == 0, old.stderr
    new = subprocess.run(
        [
            str(BIN / "cvexp-train"),
            *common,
            f"ckpt_path={tmp_path / 'old' / 'checkpoints' / 'last.ckpt'}",
            "trainer.max_epochs=3",
            "hydra.run.dir=new",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert new.returncode == 0, new.stderr
    summary = json.loads((tmp_path / "new" / "summary.json").read_text())
    assert summary["best_epoch"] in (1, 2)  # an epoch of this run, not the old run's epoch 0
    assert summary["tested_checkpoint"] == summary["best_model_path"]
    assert Path(summary["best_model_path"]).parent == tmp_path / "new" / "checkpoints"
    best = torch.load(summary["best_model_path"], map_location="cpu", weights_only=True)
    assert best["epoch"] == summary["best_epoch"]
