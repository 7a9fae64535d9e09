"""cvexp-compare on run directories written by hand (no training): metrics, grouping, cost, output."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from cvexp.cli.compare import main
from cvexp.comparison import compare
from cvexp.models.cost import count_macs_and_params
from cvexp.models.resnet_sasa import LocalSelfAttention2d
from cvexp.models.vgg import CFGS, VGG
from cvexp.viz.tables import markdown_table

# a small VGG, so that counting its cost takes milliseconds; num_classes resolves against model
TINY_NET = {"_target_": "cvexp.models.vgg.VGG", "depth": 11, "width": 0.125}
EPOCHS = 3


def curves(offset: float) -> dict[str, list[float]]:
    """Per-epoch values of the tags Lightning logs, a little different per run."""
    return {
        "train/loss_epoch": [2.0 - 0.5 * e + offset for e in range(EPOCHS)],
        "train/acc": [0.3 + 0.1 * e + offset for e in range(EPOCHS)],
        "val/loss": [2.1 - 0.4 * e + offset for e in range(EPOCHS)],
        "val/acc": [0.25 + 0.1 * e + offset for e in range(EPOCHS)],
    }


def make_run(
    path: Path,
    overrides: list[str],
    *,
    offset: float = 0.0,
    net: dict | None = None,
    exclude_keys: list[str] | None = None,
    logger: str = "tensorboard",
    config: bool = True,
) -> Path:
    """A finished run directory as cvexp-train leaves it: .hydra/, summary.json and the logs.

    `exclude_keys=None` writes no .hydra/hydra.yaml (compare then uses the package's list).
    """
    hydra = path / ".hydra"
    hydra.mkdir(parents=True)
    (hydra / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if config:
        cfg = {
            "model": {
                "num_classes": 10,
                "net": {**(net or TINY_NET), "num_classes": "${..num_classes}"},
            }
        }
        (hydra / "config.yaml").write_text(yaml.safe_dump(cfg))
    if exclude_keys is not None:
        record = {
            "hydra": {"job": {"config": {"override_dirname": {"exclude_keys": exclude_keys}}}}
        }
        (hydra / "hydra.yaml").write_text(yaml.safe_dump(record))
    values = curves(offset)
    test_acc = 0.5 + offset
    if logger == "tensorboard":
        writer = SummaryWriter(log_dir=str(path / "tensorboard"))
        for epoch in range(EPOCHS):
            step = 10 * epoch + 9
            writer.add_scalar("epoch", epoch, step)
            for tag, series in values.items():
                writer.add_scalar(tag, series[epoch], step)
        writer.add_scalar("epoch", EPOCHS - 1, 10 * EPOCHS)
        writer.add_scalar("test/acc", test_acc, 10 * EPOCHS)  # logged once
        writer.close()
    else:  # Lightning's CSVLogger: one row per logging call, blank where a column was not logged
        folder = path / "csv" / "version_0"
        folder.mkdir(parents=True)
        columns = ["epoch", "step", *values, "test/acc"]
        with (folder / "metrics.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            for epoch in range(EPOCHS):
                step = 10 * epoch + 9
                writer.writerow(
                    {
                        "epoch": epoch,
                        "step": step,
                        "val/loss": values["val/loss"][epoch],
                        "val/acc": values["val/acc"][epoch],
                    }
                )
                train = {t: values[t][epoch] for t in ("train/loss_epoch", "train/acc")}
                writer.writerow({"epoch": epoch, "step": step, **train})
            writer.writerow({"epoch": EPOCHS - 1, "step": 10 * EPOCHS, "test/acc": test_acc})
    summary = {
        "status": "completed",
        "model": "VGG",
        "best_val_acc": max(values["val/acc"]),
        "best_epoch": EPOCHS - 1,
        "test_acc": test_acc,
        "epochs_run": EPOCHS,
        "train_seconds": 1.5,
        "overrides": overrides,
    }
    (path / "summary.json").write_text(json.dumps(summary))
    return path


DEFAULT_EXCLUDED = ["data.root", "data.download", "ckpt_path", "sweep", "debug"]


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """A sweep of two widths x two seeds."""
    root = tmp_path / "multirun" / "2026-01-01" / "12-00-00"
    for number, (width, seed) in enumerate([(0.125, 1), (0.125, 2), (0.25, 1), (0.25, 2)]):
        overrides = [f"model.net.width={width}", f"seed={seed}"]
        net = {**TINY_NET, "width": width}
        offset = 0.01 * seed + (0.1 if width == 0.25 else 0.0)
        make_run(
            root / f"{number}_job", overrides, net=net, offset=offset, exclude_keys=DEFAULT_EXCLUDED
        )
    return root


def rows_by_label(result: dict) -> dict[str, dict]:
    return {row["configuration"]: row for row in result["rows"]}


def test_any_logged_scalar_is_a_metric(sweep: Path, tmp_path: Path) -> None:
    rows = rows_by_label(compare([sweep], out_dir=tmp_path / "a", metric="train/acc"))
    assert set(rows) == {"model.net.width=0.125", "model.net.width=0.25"}
    best = [max(curves(0.01 * seed)["train/acc"]) for seed in (1, 2)]
    assert rows["model.net.width=0.125"]["best_train/acc_mean"] == pytest.approx(sum(best) / 2)
    assert rows["model.net.width=0.125"]["n"] == 2
    # logged once, after the fit: a one-point curve
    rows = rows_by_label(compare([sweep], out_dir=tmp_path / "b", metric="test/acc"))
    assert rows["model.net.width=0.25"]["best_test/acc_mean"] == pytest.approx(0.5 + 0.1 + 0.015)
    # a loss is best at its minimum
    rows = rows_by_label(compare([sweep], out_dir=tmp_path / "c", metric="val/loss"))
    low = [min(curves(0.01 * seed)["val/loss"]) for seed in (1, 2)]
    assert rows["model.net.width=0.125"]["best_val/loss_mean"] == pytest.approx(sum(low) / 2)
    table = (tmp_path / "c" / "results.md").read_text()
    assert "| best val/loss |" in table and "± " in table


def test_an_unknown_metric_is_one_sentence_listing_the_tags(sweep: Path, tmp_path: Path) -> None:
    before = sorted(p.relative_to(sweep) for p in sweep.rglob("*"))
    command = Path(sys.executable).parent / "cvexp-compare"
    result = subprocess.run(
        [str(command), str(sweep), "--metric", "nope"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "--metric nope is not logged" in result.stderr
    for tag in ("test/acc", "train/acc", "train/loss_epoch", "val/acc", "val/loss"):
        assert tag in result.stderr
    listed = result.stderr.split("pass one of: ")[1].strip().rstrip(".").split(", ")
    assert "epoch" not in listed  # Lightning's epoch counter is no metric
    assert len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.relative_to(sweep) for p in sweep.rglob("*")) == before  # nothing written
    assert not (tmp_path / "comparisons").exists()


def test_out_never_replaces_earlier_results(sweep: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "ab"
    out.mkdir()
    earlier = {"results.md": b"earlier table\n", "convergence.png": b"\x89PNG earlier"}
    for name, data in earlier.items():
        (out / name).write_bytes(data)
    with pytest.raises(SystemExit) as exit_info:
        main([str(sweep), "--out", str(out)])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert "already holds an earlier comparison" in message and f"--out {out}-1" in message
    assert {p.name: p.read_bytes() for p in out.iterdir()} == earlier
    # an --out folder with other files, or none yet, is fine
    main([str(sweep), "--out", str(tmp_path / "ab-1")])
    assert (tmp_path / "ab-1" / "results.csv").is_file()


def test_out_is_never_inside_a_run(sweep: Path) -> None:
    run = next(sweep.iterdir())
    with pytest.raises(SystemExit) as exit_info:
        main([str(sweep), "--out", str(run / "comparison")])
    assert exit_info.value.code == 2
    assert not (run / "comparison").exists()


def test_a_second_comparison_of_a_sweep_gets_a_fresh_folder(sweep: Path, capsys) -> None:
    first = compare([sweep])
    assert first["out_dir"] == sweep and first["note"] == ""
    written = {name: (sweep / name).read_bytes() for name in ("results.md", "results.csv")}
    main([str(sweep), "--metric", "val/loss"])
    assert "comparison-1" in capsys.readouterr().out
    assert (sweep / "comparison-1" / "results.md").is_file()
    assert "best val/loss" in (sweep / "comparison-1" / "results.md").read_text()
    assert {name: (sweep / name).read_bytes() for name in written} == written
    assert compare([sweep])["out_dir"] == sweep / "comparison-2"


def test_each_run_is_counted_once(sweep: Path, tmp_path: Path, capsys) -> None:
    job, other = sweep / "0_job", sweep / "1_job"  # width 0.125, seeds 1 and 2
    link = tmp_path / "link"
    link.symlink_to(job)
    same_run = {
        "given twice": [job, job],
        "a/../a": [job, job / ".." / job.name],
        "a symlink": [job, link],
    }
    for number, (case, given) in enumerate(same_run.items()):
        result = compare(given, out_dir=tmp_path / f"out{number}")
        (row,) = result["rows"]
        assert (row["n"], row["status"], row["test_acc_std"]) == (1, "1 completed", 0.0), case
        assert row["runs"] == str(job), case  # the first one given is kept
        assert [d.path for d in result["duplicates"]] == [given[1]], case
    # a sweep and one of its jobs: 4 runs, each once (not 3 runs of width 0.125 from 2)
    result = compare([sweep, job], out_dir=tmp_path / "sweep_and_job")
    assert {row["configuration"]: row["n"] for row in result["rows"]} == {
        "model.net.width=0.125": 2,
        "model.net.width=0.25": 2,
    }
    assert len(result["runs"]) == 4
    (duplicate,) = result["duplicates"]
    assert str(duplicate) == (
        f"dropped {job}, the same run as {job} (in {sweep}); each run is counted once"
    )
    # the command says which one it dropped, in one line
    capsys.readouterr()
    main([str(job), str(other), str(link), "--out", str(tmp_path / "cli")])
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert notes == [f"note: dropped {link}, the same run as {job}; each run is counted once"]
    with (tmp_path / "cli" / "results.csv").open() as f:
        assert [row["n"] for row in csv.DictReader(f)] == ["2"]


def test_a_run_without_a_result_is_not_called_running(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    runs = {
        name: make_run(root / name, ["model=vgg", f"seed={n}"], exclude_keys=[])
        for n, name in enumerate(["done", "killed", "interrupted", "failed", "no_status"])
    }
    # killed by SIGKILL or out of memory (or still training): RunSummary never wrote a summary
    (runs["killed"] / "summary.json").unlink()
    # stopped by SIGTERM or Ctrl+C: RunSummary records `interrupted`, with no error
    (runs["interrupted"] / "summary.json").write_text(json.dumps({"status": "interrupted"}))
    failed = {"status": "failed", "error": "ValueError: bad"}
    (runs["failed"] / "summary.json").write_text(json.dumps(failed))
    (runs["no_status"] / "summary.json").write_text(json.dumps({"model": "VGG"}))
    result = compare([root], out_dir=tmp_path / "out")
    (row,) = result["rows"]
    assert row["status"] == (
        "1 completed, 1 failed, 1 interrupted, 1 no status in summary.json, 1 running or killed"
    )
    assert row["n"] == 1  # only the finished run's results count
    assert "running or killed" in result["table"]


def test_grouping_ignores_the_seed_and_the_keys_each_run_excludes(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    # excluded by each run's own hydra.yaml, including a key only this sweep's record lists
    make_run(
        root / "0",
        ["model=vgg", "seed=1", "data.root=/a", "note=x"],
        exclude_keys=["data.root", "note"],
    )
    make_run(
        root / "1",
        ["model=vgg", "seed=2", "data.root=/b", "note=y"],
        exclude_keys=["data.root", "note"],
    )
    # no hydra.yaml: the installed conf/hydra/default.yaml's list (which holds debug, sweep, ...)
    make_run(root / "2", ["model=vgg", "+seed=3", "debug=default", "sweep=quick", "note=x"])
    # experiment is no excluded key: sweeps vary it
    make_run(root / "3", ["model=vgg", "seed=1", "experiment=other"], exclude_keys=["data.root"])
    rows = rows_by_label(compare([root], out_dir=tmp_path / "out"))
    # 0 and 1 differ only in excluded keys and the seed (no varying key: labelled by the model);
    # 2 keeps `note` (not in the package list); 3 is another experiment
    assert {label: row["n"] for label, row in rows.items()} == {
        "VGG": 2,
        "note=x": 1,
        "experiment=other": 1,
    }
    assert rows["VGG"]["runs"] == f"{root / '0'} {root / '1'}"


def test_training_throughput_is_the_mean_of_the_runs_that_recorded_it(
    sweep: Path, tmp_path: Path
) -> None:
    """train img/s: each run's summary train_images_per_s, the mean over a configuration's
    runs; "-" where no run recorded one (runs from before it was counted)."""
    for job, rate in (("0_job", 100.0), ("1_job", 120.0)):  # the two width-0.125 runs
        summary_path = sweep / job / "summary.json"
        summary = json.loads(summary_path.read_text())
        summary_path.write_text(json.dumps({**summary, "train_images_per_s": rate}))
    result = compare([sweep], out_dir=tmp_path / "out")
    rows = rows_by_label(result)
    assert rows["model.net.width=0.125"]["train_images_per_s_mean"] == pytest.approx(110.0)
    assert rows["model.net.width=0.25"]["train_images_per_s_mean"] is None
    lines = {line.split(" | ")[1]: line for line in result["table"].splitlines()[2:4]}
    assert lines["model.net.width=0.125"].endswith("| 1.5 | 110 |")
    assert lines["model.net.width=0.25"].endswith("| 1.5 | - |")
    with (tmp_path / "out" / "results.csv").open() as f:
        rates = {row["configuration"]: row["train_images_per_s_mean"] for row in csv.DictReader(f)}
    assert float(rates["model.net.width=0.125"]) == pytest.approx(110.0)


def test_the_cost_cell_says_why_it_is_missing(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    make_run(root / "0", ["model=vgg"], exclude_keys=[])
    make_run(
        root / "1",
        ["model=timm"],
        net={
            "_target_": "cvexp.models.timm_vit.TimmClassifier",
            "name": "vit_nope",
            "pretrained": True,
        },
        exclude_keys=[],
    )
    make_run(
        root / "2", ["model=nowhere"], net={"_target_": "cvexp.models.nope.Net"}, exclude_keys=[]
    )
    no_config = make_run(tmp_path / "lone", ["model=lone"], exclude_keys=[], config=False)
    result = compare([root, no_config], out_dir=tmp_path / "out")
    rows = rows_by_label(result)
    vgg = VGG(depth=11, width=0.125)
    assert rows["model=vgg"]["params_M"] * 1e6 == pytest.approx(
        sum(p.numel() for p in vgg.parameters())
    )
    assert rows["model=vgg"]["cost_note"] == ""
    assert rows["model=timm"]["cost_note"] == "cannot build: timm has no model named 'vit_nope'"
    assert rows["model=nowhere"]["cost_note"] == "cannot build: cannot import cvexp.models.nope.Net"
    assert rows["model=lone"]["cost_note"] == "no config"
    assert rows["model=timm"]["MMACs_per_image"] is None
    table = result["table"]
    assert "n/a (cannot build: timm has no model named 'vit_nope')" in table
    assert "n/a (no config)" in table
    with (tmp_path / "out" / "results.csv").open() as f:
        notes = {row["configuration"]: row["cost_note"] for row in csv.DictReader(f)}
    assert notes["model=lone"] == "no config" and notes["model=vgg"] == ""


def test_a_csv_logged_run_is_read(tmp_path: Path) -> None:
    tb = make_run(tmp_path / "tb", ["logger=tensorboard"], exclude_keys=[])
    csv_run = make_run(tmp_path / "csv", ["logger=csv"], exclude_keys=[], logger="csv", offset=0.05)
    assert not (csv_run / "tensorboard").exists()
    result = compare([tb, csv_run], out_dir=tmp_path / "out", metric="train/acc")
    by_path = {run.path: run for run in result["runs"]}
    expected = curves(0.05)
    assert by_path[csv_run].curves["val/acc"] == [
        (e + 1, pytest.approx(v)) for e, v in enumerate(expected["val/acc"])
    ]
    assert by_path[csv_run].curves["test/acc"] == [(EPOCHS, pytest.approx(0.55))]
    assert set(by_path[csv_run].curves) == set(by_path[tb].curves)
    rows = rows_by_label(result)
    assert rows["logger=csv"]["best_train/acc_mean"] == pytest.approx(max(expected["train/acc"]))


def test_vgg11_cost_matches_a_hand_count() -> None:
    macs, params = count_macs_and_params(VGG(depth=11))
    hand, channels, size = 0, 3, 32
    for item in CFGS[11]:
        if item == "M":
            size //= 2
        else:
            hand += 3 * 3 * channels * int(item) * size * size
            channels = int(item)
    hand += 512 * 512 + 512 * 512 + 512 * 10  # the three linear layers of the head
    assert macs == pytest.approx(hand, rel=0.01)
    assert params == sum(p.numel() for p in VGG(depth=11).parameters())


def test_cost_adds_what_flop_counter_cannot_see() -> None:
    layer = LocalSelfAttention2d(3, 8, kernel_size=3, num_heads=2)
    macs, params = count_macs_and_params(nn.Sequential(layer))
    projections = 3 * 8 * 3 * 32 * 32  # 1x1 conv, 3 -> 3 x 8 channels
    relative = 8 * 9 * 32 * 32  # q . r: C x k^2 per pixel, a matmul
    neighbourhood = 2 * 8 * 9 * 32 * 32  # q . k and the weighted sum of v
    assert macs == projections + relative + neighbourhood
    assert params == sum(p.numel() for p in layer.parameters())
    assert layer.training  # counting leaves the train/eval mode as it was
    assert torch.is_grad_enabled()


def test_markdown_table() -> None:
    table = markdown_table(["a", "b"], [["1", "x|y"], ["2", "z"]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1 | x\\|y |", "| 2 | z |"]
    with pytest.raises(ValueError, match="2 columns"):
        markdown_table(["a", "b"], [["1"]])
