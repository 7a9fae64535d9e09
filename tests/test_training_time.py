"""Training time on the x axis: RunSummary logs `time/train_seconds` at each
validation's end, a resumed run counts on, and `cvexp-compare --x time` plots against it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

import cvexp.viz.curves as curves_module
from cvexp.cli.compare import main
from cvexp.comparison import compare
from cvexp.errors import UserError
from cvexp.run_record import TRAIN_SECONDS
from cvexp.viz.curves import convergence_lines, time_unit
from tests.conftest import CLI_TINY, run_cli, write_batches_dir

TWO_EPOCHS = [
    *(o for o in CLI_TINY if not o.startswith("trainer.max_epochs=")),
    "trainer.max_epochs=2",
    "callbacks.feature_maps=null",  # no figures: only the scalars matter here
]
OFFSET = 1000.0  # seconds added to a copy's checkpoint before it is resumed


def scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of a tag, as TensorBoard reads the run's event files back."""
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def resume_to_3_epochs(run_dir: Path, cwd: Path) -> None:
    on = run_cli("cvexp-train", f"resume={run_dir}", "trainer.max_epochs=3", cwd=cwd)
    assert on.returncode == 0, on.stdout + on.stderr


@pytest.fixture(scope="module")
def timed_run(tmp_path_factory, tiny) -> dict:
    """A real 2-epoch cvexp-train run, then resumed to 3 epochs: its time points before and
    after the resume, and its val/acc steps. Also a copy of the 2-epoch run whose last.ckpt
    says `OFFSET` more seconds were trained, resumed to 3 epochs: its time points after."""
    cwd = tmp_path_factory.mktemp("timed")
    write_batches_dir(cwd / "data", tiny)
    first = run_cli("cvexp-train", *TWO_EPOCHS, cwd=cwd)
    assert first.returncode == 0, first.stdout + first.stderr
    (run_dir,) = [p for p in (cwd / "outputs").glob("*/*") if p.is_dir()]
    before = scalars(run_dir, TRAIN_SECONDS)
    copy = shutil.copytree(run_dir, cwd / "copies" / run_dir.name)
    checkpoint = torch.load(copy / "checkpoints" / "last.ckpt", weights_only=False)
    state = checkpoint["callbacks"]["RunSummary"]
    state["run_dir"] = str(copy.resolve())  # the copy's own state, not another run's
    state["train_seconds"] += OFFSET
    del state["train_images"]  # as saved before training images were counted
    torch.save(checkpoint, copy / "checkpoints" / "last.ckpt")
    resume_to_3_epochs(run_dir, cwd)
    resume_to_3_epochs(copy, cwd)
    return {
        "cwd": cwd,
        "run_dir": run_dir,
        "before": before,
        "after": scalars(run_dir, TRAIN_SECONDS),
        "copy_after": scalars(copy, TRAIN_SECONDS),
        "val_acc_steps": [step for step, _ in scalars(run_dir, "val/acc")],
        "summary": json.loads((run_dir / "summary.json").read_text()),
        "copy_summary": json.loads((copy / "summary.json").read_text()),
    }


def old_run(path: Path) -> Path:
    """A finished run as cvexp-train left it before it logged the training time."""
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["seed=9"]))
    writer = SummaryWriter(log_dir=str(path / "tensorboard"))
    for epoch in range(2):
        writer.add_scalar("epoch", epoch, 10 * epoch + 9)
        writer.add_scalar("val/acc", 0.2 + 0.1 * epoch, 10 * epoch + 9)
    writer.close()
    summary = {"status": "completed", "best_val_acc": 0.3, "best_epoch": 1, "epochs_run": 2}
    (path / "summary.json").write_text(json.dumps(summary))
    return path


@pytest.mark.slow
def test_one_time_point_per_epoch_at_val_acc_steps_and_a_resume_counts_on(timed_run) -> None:
    before, after = timed_run["before"], timed_run["after"]
    assert len(before) == 2 and len(after) == 3  # once per epoch (no sanity check, no steps)
    assert after[:2] == before  # the resume adds epoch 3 and rewrites nothing
    assert [step for step, _ in after] == timed_run["val_acc_steps"]
    seconds = [value for _, value in after]
    assert 0 < seconds[0] < seconds[1] < seconds[2]
    # epoch 3 counts on from the seconds in the checkpoint it resumed from: no reset
    copy = timed_run["copy_after"]
    assert copy[:2] == before and copy[2][1] > OFFSET + before[1][1]
    # the fit's time, validation included, is at least the training time it logged
    assert timed_run["summary"]["train_seconds"] >= seconds[-1]


@pytest.mark.slow
def test_the_summary_counts_training_images_and_their_rate_across_a_resume(timed_run) -> None:
    summary = timed_run["summary"]
    # 3 epochs (2, then 1 after the resume) of 2 batches of 8 images
    assert summary["train_images"] == 3 * 2 * 8
    # per second of training steps: at most the images over the last logged training time
    # (validation not counted there either; the fit ran on a little after it)
    seconds = timed_run["after"][-1][1]
    assert 0 < summary["train_images_per_s"] <= 48 / seconds + 0.05
    # resumed from a checkpoint that did not count its images: no rate rather than a wrong one
    copy = timed_run["copy_summary"]
    assert copy["status"] == "completed"
    assert "train_images" not in copy and "train_images_per_s" not in copy


@pytest.mark.slow
def test_compare_x_time_writes_the_time_graph(timed_run) -> None:
    cwd, run_dir = timed_run["cwd"], timed_run["run_dir"]
    result = run_cli("cvexp-compare", str(run_dir), "--x", "time", "--out", "cmp_time", cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "wrote convergence_time.png, results.md and results.csv" in result.stdout
    out = cwd / "cmp_time"
    assert sorted(p.name for p in out.iterdir()) == [
        "convergence_time.png",
        "results.csv",
        "results.md",
    ]
    with Image.open(out / "convergence_time.png") as image:
        assert image.format == "PNG" and image.width > 1000


@pytest.mark.slow
def test_the_time_axis_is_each_epochs_logged_training_seconds(
    timed_run, tmp_path: Path, monkeypatch
) -> None:
    drawn = {}
    draw = curves_module.convergence_lines

    def spy(configurations, tags, *, x="epoch"):
        drawn[x] = draw(configurations, tags, x=x)
        return drawn[x]

    monkeypatch.setattr(curves_module, "convergence_lines", spy)
    result = compare([timed_run["run_dir"]], out_dir=tmp_path / "both", x="both")
    assert result["figures"] == ["convergence.png", "convergence_time.png"]
    assert (tmp_path / "both" / "convergence.png").is_file()
    assert (tmp_path / "both" / "convergence_time.png").is_file()
    seconds = [value for _, value in timed_run["after"]]
    lines, xlabel = drawn["time"]
    assert xlabel == "training time (s)"  # a tiny run: seconds
    for tag in ("val/acc", "val/loss", "train/loss_epoch"):
        (line,) = lines[tag]
        assert line.xs == pytest.approx(seconds), tag
    lines, xlabel = drawn["epoch"]
    assert xlabel == "epoch" and lines["val/acc"][0].xs == [1.0, 2.0, 3.0]


@pytest.mark.slow
def test_runs_without_a_training_time_are_refused_for_x_time(
    timed_run, tmp_path: Path, capsys
) -> None:
    old = old_run(tmp_path / "old")
    with pytest.raises(UserError, match=r"--x time needs the training time") as refused:
        compare([timed_run["run_dir"], old], out_dir=tmp_path / "out", x="time")
    message = str(refused.value)
    assert str(old) in message and str(timed_run["run_dir"]) not in message
    assert "--x epoch" in message and message.count(". ") == 0
    assert not (tmp_path / "out").exists()
    # the console script: one sentence, exit 2; by epoch, the same runs are compared as before
    with pytest.raises(SystemExit) as exited:
        main([str(old), "--x", "both", "--out", str(tmp_path / "cli")])
    assert exited.value.code == 2 and "--x both needs the training time" in capsys.readouterr().err
    main([str(timed_run["run_dir"]), str(old), "--out", str(tmp_path / "by_epoch")])
    assert sorted(p.name for p in (tmp_path / "by_epoch").iterdir()) == [
        "convergence.png",
        "results.csv",
        "results.md",
    ]
    assert "wrote convergence.png, results.md and results.csv" in capsys.readouterr().out


def test_time_lines_average_the_seeds_seconds_per_epoch_in_a_readable_unit() -> None:
    def run(seconds: list[float], acc: list[float]) -> dict:
        epochs = range(1, len(seconds) + 1)
        return {
            "val/acc": list(zip(epochs, acc, strict=True)),
            TRAIN_SECONDS: list(zip(epochs, seconds, strict=True)),
        }

    configurations = {
        "cnn": [(run([600, 1200], [0.5, 0.6]), 1), (run([660, 1320], [0.7, 0.8]), 0)],
        "vit": [(run([1800], [0.4]), None)],
    }
    lines, xlabel = convergence_lines(configurations, ["val/acc"], x="time")
    assert xlabel == "training time (min)"  # the longest run: 30 minutes
    cnn, vit = lines["val/acc"]
    assert (cnn.label, cnn.n, vit.label, vit.n) == ("cnn", 2, "vit", 1)
    assert cnn.xs == pytest.approx([10.5, 21.0]) and cnn.means == pytest.approx([0.6, 0.7])
    assert cnn.best == [(20.0, 0.6), (11.0, 0.7)]  # each run's best epoch, at its own time
    assert vit.xs == [30.0] and vit.stds == [0.0]
    assert time_unit(59) == ("s", 1.0) and time_unit(3600) == ("min", 60.0)
    assert time_unit(5 * 3600) == ("h", 3600.0)
