"""cvexp.runtime.continuation: how a run starts, decided from the config and the run's record."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from cvexp.errors import UserError
from cvexp.outside_launch import OutsideLaunch
from cvexp.run_record import RunDir
from cvexp.runtime.config import compose_config, register_resolvers
from cvexp.runtime.continuation import (
    FRESH,
    How,
    decide,
    requeued_run,
    resume_command_line,
)


def make_run(path: Path, overrides: list[str], *, cwd: Path, summary: dict | None = None) -> RunDir:
    """A run folder as cvexp-train leaves it: Hydra's record, a last.ckpt, maybe a summary."""
    run = RunDir(path)
    run.record_dir.mkdir(parents=True)
    run.overrides_path.write_text(yaml.safe_dump(overrides))
    run.hydra_record_path.write_text(
        yaml.safe_dump(
            {
                "hydra": {
                    "overrides": {"hydra": ["hydra.run.dir=old", "hydra.searchpath=[x]"]},
                    "runtime": {"cwd": str(cwd)},
                }
            }
        )
    )
    run.config_path.write_text(yaml.safe_dump({"data": {"root": "ds"}}))
    run.checkpoints_dir.mkdir()
    run.last_checkpoint.write_bytes(b"ckpt")
    if summary is not None:
        run.write_summary(summary)
    return run


def sweep_job(tmp_path: Path, *overrides: str):
    """A composed sweep job's config whose folder is tmp_path/job."""
    return compose_config("train", ["hydra.mode=MULTIRUN", *overrides], output_dir=tmp_path / "job")


def test_a_plain_run_starts_fresh(tmp_path: Path) -> None:
    assert decide(OmegaConf.create({"paths": {"output_dir": str(tmp_path)}})) == FRESH


def test_resume_continues_the_run_from_its_last_checkpoint(tmp_path: Path) -> None:
    run = make_run(tmp_path / "r", ["model=tiny"], cwd=tmp_path, summary={"status": "completed"})
    decision = decide(OmegaConf.create({"resume": str(run.path)}))
    assert decision.how is How.RESUME and decision.run == run
    assert decision.ckpt_path == str(run.last_checkpoint)
    assert decision.earlier["status"] == "completed"


@pytest.mark.parametrize(
    "summary, checkpoint, how",
    [
        ({"status": "completed"}, True, How.SKIP_FINISHED),
        ({"status": "stopped_early"}, False, How.SKIP_FINISHED),
        ({"status": "interrupted"}, True, How.CONTINUE_INTERRUPTED),
        (None, True, How.CONTINUE_INTERRUPTED),  # killed before it wrote a summary
        ({"status": "interrupted"}, False, How.FRESH),  # nothing to continue from
        ({"status": "failed", "error": "lr"}, True, How.FRESH),  # an error: run it again
    ],
)
def test_a_sweep_run_again_skips_or_continues_each_job(
    tmp_path: Path, summary: dict | None, checkpoint: bool, how: How
) -> None:
    job = RunDir(tmp_path / "job")
    job.path.mkdir()
    if summary is not None:
        (job.summary_path).write_text(json.dumps(summary))
    if checkpoint:
        job.checkpoints_dir.mkdir()
        job.last_checkpoint.write_bytes(b"ckpt")
    decision = decide(sweep_job(tmp_path, "skip_completed=true"))
    assert decision.how is how
    if how is How.CONTINUE_INTERRUPTED:
        assert decision.ckpt_path == str(job.last_checkpoint)
    # without skip_completed=true, every job starts afresh
    assert decide(sweep_job(tmp_path)) == FRESH


def test_resume_becomes_the_runs_own_command_line(tmp_path: Path) -> None:
    run = make_run(
        tmp_path / "dir with space",
        ["model=tiny", "trainer.max_epochs=1", "init_from=gone.ckpt", "+tags=[a]"],
        cwd=tmp_path / "started_here",
    )
    argv = resume_command_line(
        ["cvexp-train", f"resume='{run.path}'", "trainer.max_epochs=3", "tags=[b]"], None
    )
    target = run.path.resolve()
    assert argv[0] == "cvexp-train"
    assert argv[1:] == [
        "hydra.searchpath=[x]",  # the run's own hydra overrides, not its old run dir
        "model=tiny",
        f"data.root='{tmp_path / 'started_here' / 'ds'}'",  # relative: as the run saw it
        "trainer.max_epochs=3",
        "++tags=[b]",  # a key the run added with '+'
        f"hydra.run.dir='{target}'",
        "hydra.mode=RUN",
        f"resume='{target}'",
    ]  # init_from is not read again: last.ckpt holds every weight
    assert len(list(run.history_dir.glob("*/overrides.yaml"))) == 1
    # DDP's other ranks start from this command line: it stays as it is
    assert resume_command_line(argv, None) == argv


@pytest.mark.parametrize(
    "extra, message",
    [
        (["-m"], "drop -m"),
        (["model=vgg16"], "cannot change"),
        (["model.net.width=0.5"], "cannot change"),
    ],
)
def test_resume_refuses_what_would_make_another_run(
    tmp_path: Path, extra: list[str], message: str
) -> None:
    run = make_run(tmp_path / "r", ["model=tiny"], cwd=tmp_path)
    with pytest.raises(UserError, match=message):
        resume_command_line(["cvexp-train", f"resume={run.path}", *extra], None)
    assert not run.history_dir.exists()


def test_resume_refuses_a_folder_that_is_not_a_run_or_has_no_last_checkpoint(
    tmp_path: Path,
) -> None:
    with pytest.raises(UserError, match="is not a run directory"):
        resume_command_line(["cvexp-train", f"resume={tmp_path}"], None)
    run = make_run(tmp_path / "r", ["model=tiny"], cwd=tmp_path)
    run.last_checkpoint.unlink()
    with pytest.raises(UserError, match=r"no checkpoints/last\.ckpt"):
        resume_command_line(["cvexp-train", f"resume={run.path}"], None)


def test_a_requeued_slurm_job_finds_its_run(tmp_path: Path, monkeypatch) -> None:
    launch = OutsideLaunch("slurm", rank=0, world_size=1, slurm_job="7", slurm_step="batch")
    config = OmegaConf.create(
        {"hydra": {"job": {"name": "train"}, "overrides": {"task": ["seed=1"]}}}
    )
    mine = make_run(tmp_path / "d" / "t1", ["seed=1"], cwd=tmp_path)
    other = make_run(tmp_path / "d" / "t2", ["seed=2"], cwd=tmp_path)
    for run, overrides in ((mine, ["seed=1"]), (other, ["seed=2"])):
        run.write_launch_record({"slurm_job": "7", "slurm_step": "batch", "overrides": overrides})
    runs = [mine, other]
    assert requeued_run(config, launch, runs) is None  # not requeued: a new run
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert requeued_run(config, launch, runs) == mine
    mine.write_summary({"status": "completed"})
    with pytest.raises(SystemExit) as finished:  # requeued after it finished: nothing to do
        requeued_run(config, launch, runs)
    assert finished.value.code == 0


def test_resume_resolves_the_default_data_root_as_the_run_did(tmp_path: Path, monkeypatch) -> None:
    """Hydra records `data.root: ${data_root:}` unresolved: ./data of the folder it started in."""
    monkeypatch.delenv("CVEXP_DATA", raising=False)
    register_resolvers()
    run = make_run(tmp_path / "r", ["model=tiny"], cwd=tmp_path / "there")
    run.config_path.write_text(yaml.safe_dump({"data": {"root": "${data_root:}"}}))
    argv = resume_command_line(["cvexp-train", f"resume={run.path}"], None)
    assert f"data.root='{tmp_path / 'there' / 'data'}'" in argv
    # an absolute CVEXP_DATA needs no pinning
    monkeypatch.setenv("CVEXP_DATA", str(tmp_path / "cifar"))
    argv = resume_command_line(["cvexp-train", f"resume={run.path}"], None)
    assert not [a for a in argv if a.startswith("data.root=")]


def test_resume_last_is_the_newest_unfinished_run_under_the_log_dir(tmp_path: Path) -> None:
    outputs = tmp_path / "logs" / "outputs"
    older = make_run(outputs / "2026-12-01" / "10-00-00", ["model=tiny"], cwd=tmp_path)
    done = make_run(
        outputs / "2026-12-02" / "10-00-00",
        ["model=tiny"],
        cwd=tmp_path,
        summary={"status": "completed"},
    )
    os.utime(older.last_checkpoint, (1, 1))  # the oldest last.ckpt
    argv = ["cvexp-train", "resume=last", f"paths.log_dir={tmp_path / 'logs'}"]
    assert f"resume='{older.path.resolve()}'" in resume_command_line(argv, None)
    newer = make_run(
        outputs / "2026-12-03" / "10-00-00",
        ["model=tiny"],
        cwd=tmp_path,
        summary={"status": "interrupted"},
    )
    assert f"resume='{newer.path.resolve()}'" in resume_command_line(argv, None)
    assert done.path != newer.path
    with pytest.raises(UserError, match=r"resume=last found no unfinished run .* paths\.log_dir="):
        resume_command_line(["cvexp-train", "resume=last", f"paths.log_dir={tmp_path}"], None)


def test_resume_puts_hydras_flags_first_and_keeps_no_history_for_cfg(tmp_path: Path) -> None:
    run = make_run(tmp_path / "r", ["model=tiny"], cwd=tmp_path)
    argv = resume_command_line(
        ["cvexp-train", f"resume={run.path}", "--cfg", "job", "trainer.max_epochs=3"], None
    )
    assert argv[1:3] == ["--cfg", "job"]  # Hydra reads no override before a flag
    assert "trainer.max_epochs=3" in argv[3:]
    assert not run.history_dir.exists()  # --cfg only prints: nothing is written


def test_resume_of_a_run_without_hydras_record_does_not_fail(tmp_path: Path) -> None:
    run = make_run(tmp_path / "r", ["model=tiny"], cwd=tmp_path)
    run.hydra_record_path.unlink()
    argv = resume_command_line(["cvexp-train", f"resume={run.path}"], None)
    assert argv[-1] == f"resume='{run.path.resolve()}'"
