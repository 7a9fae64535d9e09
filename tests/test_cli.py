"""The console scripts, run as subprocesses: a real run, evaluation, and bad input of every kind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cvexp.app import fresh_dir, path_safe
from cvexp.checkpoint import load_classifier
from cvexp.errors import UserError
from tests.conftest import CLI_TINY, run_cli

TINY = CLI_TINY


def snapshot(folder: Path) -> dict[Path, bytes]:
    """Every file under a folder, with its bytes."""
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_one_clear_error(result, *fragments: str) -> None:
    """Non-zero exit, the fragments in stderr, and no Python traceback."""
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny) -> tuple[Path, Path, dict]:
    """One real `cvexp-train` run in a fresh working directory: (cwd, run dir, summary)."""
    from tests.conftest import write_batches_dir

    cwd = tmp_path_factory.mktemp("cli")
    data_root = cwd / "data"
    write_batches_dir(data_root, tiny)
    result = run_cli("cvexp-train", *TINY, cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    (run_dir,) = [p for p in (cwd / "outputs").glob("*/*") if p.is_dir()]
    return cwd, run_dir, json.loads((run_dir / "summary.json").read_text())


def test_train_cli_writes_the_run_directory(finished_run) -> None:
    cwd, run_dir, summary = finished_run
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / ".hydra" / "overrides.yaml").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert summary["status"] == "completed"
    assert summary["model"] == "vgg16_bn"
    assert Path(summary["best_model_path"]).is_file()
    assert "data.val_size=40" in summary["overrides"]
    # data.root=./data (the default) was resolved against the working directory
    assert (cwd / "data" / ".cvexp_cache").is_dir()


def test_eval_cli_writes_metrics_per_class_accuracy_and_confusion_matrix(finished_run) -> None:
    cwd, _, summary = finished_run
    result = run_cli(
        "cvexp-eval", f"ckpt_path={summary['best_model_path']}", "trainer.accelerator=cpu", cwd=cwd
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (eval_dir,) = list((cwd / "outputs" / "eval").glob("*/*"))
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


def test_fresh_dir_never_reuses_a_directory(tmp_path: Path) -> None:
    target = tmp_path / "2026-11-26" / "12-00-00"
    assert fresh_dir(str(target)) == str(target)
    assert target.is_dir()  # claimed at once, so a concurrent run cannot take it too
    assert fresh_dir(str(target)) == f"{target}-1"
    assert fresh_dir(str(target)) == f"{target}-2"


BAD_TRAIN_INPUTS = [
    pytest.param(["model=resnet999"], ["model", "resnet999", "vgg16_bn"], id="unknown-model"),
    pytest.param(
        ["data.root=./nowhere"], ["No CIFAR-10 found", "data.download=true"], id="missing-dataset"
    ),
    pytest.param(
        [
            "data.root=./empty",
            "data.download=true",
            "+data.download_url=http://127.0.0.1:9/cifar-10-python.tar.gz",
        ],
        ["Could not download CIFAR-10", "may be offline", "CVEXP_DATA"],
        id="download-without-network",
    ),
    pytest.param(["data.val_size=0"], ["data.val_size=0 is out of range"], id="val-size-zero"),
    pytest.param(
        ["data.val_size=-3"], ["data.val_size=-3 is out of range"], id="val-size-negative"
    ),
    pytest.param(
        ["data.val_size=50000"], ["data.val_size=50000 is out of range"], id="val-size-too-big"
    ),
    pytest.param(["data.batch_size=abc"], ["data.batch_size must be an integer"], id="wrong-type"),
    pytest.param(
        ["trainer.devices=2", "trainer.strategy=ddp", "data.batch_size=9"],
        ["data.batch_size=9 is not divisible by the 2 devices"],
        id="batch-not-divisible",
    ),
]


@pytest.mark.parametrize(("overrides", "fragments"), BAD_TRAIN_INPUTS)
def test_bad_train_input_gets_one_clear_sentence(finished_run, overrides, fragments) -> None:
    cwd, run_dir, _ = finished_run
    before = snapshot(run_dir)
    result = run_cli("cvexp-train", *TINY, *overrides, cwd=cwd)
    assert_one_clear_error(result, *fragments)
    assert snapshot(run_dir) == before  # an earlier run is never touched
    failed = [p for p in (cwd / "outputs").glob("*/*/summary.json") if p.parent != run_dir]
    for summary in failed:  # a run that failed after Hydra made its directory records why
        assert json.loads(summary.read_text())["status"] == "failed"


def test_truncated_batch_file_through_the_cli(tmp_path: Path, tiny) -> None:
    from tests.conftest import write_batches_dir

    folder = write_batches_dir(tmp_path / "data", tiny)
    (folder / "data_batch_2").write_bytes((folder / "data_batch_2").read_bytes()[:500])
    result = run_cli("cvexp-train", *TINY, cwd=tmp_path)
    assert_one_clear_error(result, "data_batch_2 is truncated or corrupt", "data.download=true")


def test_bad_checkpoints_for_eval(finished_run, tmp_path: Path) -> None:
    cwd, run_dir, summary = finished_run
    before = snapshot(run_dir)
    not_a_checkpoint = tmp_path / "notes.ckpt"
    not_a_checkpoint.write_text("hello")
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    other_arch = tmp_path / "vgg11.ckpt"
    checkpoint = torch.load(summary["best_model_path"], map_location="cpu", weights_only=True)
    checkpoint["net_config"]["depth"] = 11  # claims a VGG11, holds VGG16 weights
    torch.save(checkpoint, other_arch)
    # two through the console script; every case through the loader it uses
    for path, fragment in [
        (not_a_checkpoint, "is not a"),
        (other_arch, "do not fit the architecture"),
    ]:
        result = run_cli("cvexp-eval", f"ckpt_path={path}", cwd=cwd)
        assert_one_clear_error(result, fragment)
    for path, fragment in [
        (tmp_path / "missing.ckpt", "Checkpoint not found"),
        (not_a_checkpoint, "is not a"),
        (empty, "is not a"),
        (other_arch, "do not fit the architecture"),
    ]:
        with pytest.raises(UserError, match=fragment):
            load_classifier(path)
    assert snapshot(run_dir) == before


def test_path_safe_names_are_short_unique_and_flat() -> None:
    assert path_safe("model-vgg16+seed-1") == "model-vgg16+seed-1"
    assert path_safe("a=b,c") == "a_b_c"
    assert "/" not in path_safe("data.root=/a/b")
    long_a, long_b = "x=" + "1" * 300, "x=" + "1" * 299 + "2"
    assert len(path_safe(long_a)) == 120 and path_safe(long_a) != path_safe(long_b)
