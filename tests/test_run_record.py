"""cvexp.run_record: a run folder's layout, summary.json, and its lock; no subprocess."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cvexp.run_record import (
    SCHEMA_VERSION,
    RunDir,
    RunInUse,
    claim_lock,
    objective,
    override_key,
    recorded_best,
    release_lock,
)


def test_the_layout_is_spelled_in_one_place(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    assert run.summary_path == tmp_path / "summary.json"
    assert run.last_checkpoint == tmp_path / "checkpoints" / "last.ckpt"
    assert run.overrides_path == tmp_path / ".hydra" / "overrides.yaml"
    assert run.history_dir.parent == run.record_dir
    assert not run.holds_a_run() and not run.is_run()


def test_a_summary_is_written_whole_with_its_schema_and_read_back(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    run.write_summary({"status": "completed", "best_val_acc": 0.5})
    assert run.read_summary() == {
        "schema_version": SCHEMA_VERSION,
        "status": "completed",
        "best_val_acc": 0.5,
    }
    assert run.finished_summary() is not None and run.holds_a_run()
    assert not list(run.path.glob("*.tmp"))
    with pytest.raises(ValueError, match="status must be one of"):
        run.write_summary({"status": "running"})


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_the_summary_mode_follows_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        RunDir(tmp_path).write_summary({"status": "failed"})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "summary.json").stat().st_mode) == mode


def test_an_unreadable_summary_is_no_summary(tmp_path: Path) -> None:
    (tmp_path / "summary.json").write_text("{half")
    assert RunDir(tmp_path).read_summary() is None
    (tmp_path / "summary.json").write_text("[1, 2]")
    assert RunDir(tmp_path).read_summary() is None


@pytest.mark.parametrize(
    "summary, stopped",
    [
        (None, True),  # killed before it could write one
        ({"status": "interrupted"}, True),
        ({"status": "failed"}, True),  # failed without an error: killed mid-write
        ({"status": "failed", "error": "bad lr"}, False),
        ({"status": "completed"}, False),
        ({"status": "time_limit"}, False),
    ],
)
def test_was_stopped(tmp_path: Path, summary: dict | None, stopped: bool) -> None:
    if summary is not None:
        (tmp_path / "summary.json").write_text(json.dumps(summary))
    assert RunDir(tmp_path).was_stopped() is stopped


def test_the_recorded_overrides_and_hydra_overrides(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.record_dir.mkdir()
    run.overrides_path.write_text(yaml.safe_dump(["model=vgg16", "+tags=[a]"]))
    run.hydra_record_path.write_text(
        yaml.safe_dump({"hydra": {"overrides": {"hydra": ["hydra.run.dir=x"], "task": []}}})
    )
    assert run.is_run()
    assert run.recorded_overrides() == ["model=vgg16", "+tags=[a]"]
    assert run.recorded_hydra_overrides() == ["hydra.run.dir=x"]


def test_override_keys_and_recorded_best() -> None:
    assert override_key("+model.net.width=0.5") == "model.net.width"
    assert override_key("~callbacks.ema") == "callbacks.ema"
    assert override_key("++a.b=c=d") == "a.b"
    summary = {"best_val_acc": 0.7, "optimized_metric": {"name": "val/loss", "best": 0.3}}
    assert recorded_best(summary, "val/acc") == 0.7
    assert recorded_best(summary, "val/loss") == 0.3
    assert recorded_best(summary, "train/acc") is None
    assert objective(summary, "train/acc") != objective(summary, "train/acc")  # NaN


def test_the_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from cvexp.run_record import RunDir, claim_lock; "
            "claim_lock(RunDir(sys.argv[1])); print('held', flush=True); time.sleep(60)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunInUse, match=str(holder.pid)):
            claim_lock(run)
    finally:
        holder.kill()
        holder.wait()
    claim_lock(run)  # the holder is gone: taken over
    assert json.loads(run.lock_path.read_text())["pid"] == os.getpid()
    claim_lock(run)  # this process holds it already
    release_lock(run)
    assert not run.lock_path.exists()


def test_an_empty_lock_being_written_counts_as_held(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.record_dir.mkdir()
    run.lock_path.write_text("")  # created, its content not written yet
    with pytest.raises(RunInUse, match="just starting"):
        claim_lock(run)


def test_resume_last_never_picks_a_run_that_is_still_training(tmp_path: Path) -> None:
    from cvexp.run_record import latest_unfinished_run

    run = RunDir(tmp_path / "outputs" / "2026-12-05" / "10-00-00")
    run.record_dir.mkdir(parents=True)
    run.overrides_path.write_text("[]")
    run.checkpoints_dir.mkdir()
    run.last_checkpoint.write_bytes(b"ckpt")
    assert latest_unfinished_run(tmp_path / "outputs") == run
    claim_lock(run)  # this (live) process trains it
    assert latest_unfinished_run(tmp_path / "outputs") is None
    release_lock(run)
