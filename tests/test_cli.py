"""The console scripts, run as subprocesses: a real run and its evaluation (bad input: test_bad_inputs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cvexp.runtime.hydra_app import path_safe
from cvexp.runtime.run_dir import claim_fresh_dir
from tests.conftest import CLI_TINY, run_cli, write_batches_dir

TINY = CLI_TINY


@pytest.mark.slow
def test_train_cli_writes_the_run_directory(finished_run) -> None:
    cwd, run_dir, summary = finished_run
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / ".hydra" / "overrides.yaml").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert "GPU available" in (run_dir / "train.log").read_text()  # Lightning's console log
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert summary["status"] == "completed"
    assert summary["model"] == "tiny"
    assert Path(summary["best_model_path"]).is_file()
    assert "data.val_size=40" in summary["overrides"]
    # data.root=./data (the default) was resolved against the working directory
    assert (cwd / "data" / ".cvexp_cache").is_dir()


@pytest.mark.slow
def test_eval_cli_writes_metrics_per_class_accuracy_and_confusion_matrix(finished_run) -> None:
    cwd, _, summary = finished_run
    result = run_cli(
        "cvexp-eval", f"ckpt_path={summary['best_model_path']}", "trainer.accelerator=cpu", cwd=cwd
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (eval_dir,) = [p.parent for p in (cwd / "outputs" / "eval").glob("*/metrics.json")]
    # named for the checkpoint it evaluated: <run folder>_<checkpoint file name>
    assert eval_dir.name.startswith(Path(summary["best_model_path"]).parents[1].name + "_epoch")
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    assert metrics["test_images"] == 60  # the whole tiny test set
    assert len(metrics["per_class_accuracy"]) == 10
    assert sum(map(sum, metrics["confusion_matrix"])) == 60
    # the run's own test was limited to 2 batches of 8; on the whole set it may differ, so
    # compare against the diagonal of the matrix instead
    diagonal = sum(metrics["confusion_matrix"][i][i] for i in range(10))
    assert metrics["test_acc"] == pytest.approx(diagonal / 60)
    for name in ("per_class_accuracy.csv", "confusion_matrix.csv", "confusion_matrix.png"):
        assert (eval_dir / name).stat().st_size > 0
    events = EventAccumulator(str(eval_dir / "tensorboard"))
    events.Reload()
    assert "test/confusion_matrix" in events.Tags()["images"]
    assert "test/acc_per_class/cat" in events.Tags()["scalars"]


def test_claim_fresh_dir_never_reuses_a_directory(tmp_path: Path) -> None:
    target = tmp_path / "2026-11-26" / "12-00-00"
    assert claim_fresh_dir(target) == target
    assert target.is_dir()  # claimed at once, so a concurrent run cannot take it too
    assert claim_fresh_dir(target) == Path(f"{target}-1")
    assert claim_fresh_dir(target) == Path(f"{target}-2")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "name"),
    [
        ("cvexp-train", "cvexp-train"),
        ("cvexp-eval", "cvexp-eval"),
        ("cvexp-visualize", "cvexp-visualize"),
        ("cvexp-predict", "cvexp-predict"),
        ("cvexp-export", "cvexp-export"),
        ("cvexp-attention", "cvexp-attention"),
    ],
)
def test_help_names_the_command_and_leaves_the_working_directory_as_it_was(
    tmp_path: Path, command: str, name: str
) -> None:
    result = run_cli(command, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{name}: ")
    assert "powered by Hydra" not in result.stdout
    assert "== Main keys" in result.stdout and "(default: " in result.stdout
    assert "(no comment in conf/)" not in result.stdout
    assert result.stdout.count(f"\n  {name} ") >= 2  # examples
    assert run_cli(command, "--cfg", "job", cwd=tmp_path).returncode == 0
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_an_explicit_run_dir_that_holds_a_run_is_refused_and_left_as_it_was(finished_run) -> None:
    cwd, run_dir, _ = finished_run
    before = {p: p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}
    result = run_cli("cvexp-train", *TINY, "seed=7", f"hydra.run.dir={run_dir}", cwd=cwd)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert f"resume={run_dir}" in result.stderr
    assert {p: p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()} == before


def test_path_safe_names_are_short_unique_and_flat() -> None:
    assert path_safe("model-vgg16+seed-1") == "model-vgg16+seed-1"
    assert path_safe("a=b,c") == "a_b_c"
    assert "/" not in path_safe("data.root=/a/b")
    long_a, long_b = "x=" + "1" * 300, "x=" + "1" * 299 + "2"
    assert len(path_safe(long_a)) == 120 and path_safe(long_a) != path_safe(long_b)


@pytest.mark.slow
def test_resume_last_continues_the_newest_unfinished_run(tmp_path: Path, tiny) -> None:
    write_batches_dir(tmp_path / "data", tiny)
    first = run_cli("cvexp-train", *CLI_TINY, "callbacks.feature_maps=null", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    (run_dir,) = list((tmp_path / "outputs").glob("*/*"))
    summary = json.loads((run_dir / "summary.json").read_text())
    # as a run killed in its second epoch would leave it: not finished, with a last.ckpt
    (run_dir / "summary.json").write_text(json.dumps({**summary, "status": "interrupted"}))
    on = run_cli("cvexp-train", "resume=last", "trainer.max_epochs=2", cwd=tmp_path)
    assert on.returncode == 0, on.stdout + on.stderr
    assert f"resume=last continues {run_dir}" in on.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_run"] == 2
    # nothing left to continue: one sentence
    none = run_cli("cvexp-train", "resume=last", cwd=tmp_path)
    assert none.returncode == 2 and "resume=last found no unfinished run" in none.stderr
    assert "Traceback" not in none.stderr
