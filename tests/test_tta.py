"""Test-time augmentation (tta=flip): test/acc_tta beside test/acc, in cvexp-train's final test,
summary.json, TensorBoard, cvexp-eval and cvexp-compare; test/acc stays the plain test."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from torch.nn import functional as F

from cvexp.checkpoint import load_classifier
from cvexp.classifier import TTA_MODES, ImageClassifier
from cvexp.comparison import compare
from cvexp.data import CIFAR10DataModule
from cvexp.errors import UserError
from cvexp.evaluation import evaluate
from cvexp.run_record import SCHEMA_VERSION
from cvexp.runtime.config import compose_config
from cvexp.runtime.settings import TTA_MODES as TTA_SETTINGS
from cvexp.runtime.settings import check_settings
from cvexp.training import train
from tests.conftest import assert_one_clear_error, run_cli
from tests.test_comparison import make_run
from tests.test_step_syncs import SyncCounter, sync_counter  # noqa: F401 (a fixture)
from tests.test_training import read_scalars
from tests.tiny_checkpoint import write_tiny_checkpoint


def by_hand(classifier: ImageClassifier, data_root: Path) -> dict[str, float]:
    """Accuracy and mean cross-entropy over the whole tiny test set, of the plain logits and of
    the mean of the logits of each image and its horizontal flip, computed outside Lightning."""
    dm = CIFAR10DataModule(str(data_root), download=False, val_size=40, batch_size=8)
    dm.setup("test")
    plain, mean, labels = [], [], []
    classifier.eval()
    with torch.no_grad():
        for batch in dm.test_dataloader():
            x, y = dm.on_after_batch_transfer(batch, 0)
            logits = classifier(x)
            plain.append(logits)
            mean.append((logits + classifier(torch.flip(x, dims=[3]))) / 2)
            labels.append(y)
    y = torch.cat(labels)
    assert len(y) == len(dm.data.test_labels) == 60
    result = {}
    for name, logits in (("", torch.cat(plain)), ("_tta", torch.cat(mean))):
        result[f"test_acc{name}"] = (logits.argmax(1) == y).double().mean().item()
        result[f"test_loss{name}"] = F.cross_entropy(logits, y).item()
    return result


def test_flip_is_its_own_metric_beside_the_plain_test(
    compose_train, tmp_path: Path, data_root: Path
) -> None:
    cfg = compose_train("tta=flip", "trainer.limit_test_batches=null")
    summary = train(cfg)
    assert summary["status"] == "completed"
    tested = summary["tested_checkpoint"]
    assert tested == summary["best_model_path"]
    expected = by_hand(load_classifier(tested)[0], data_root)

    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["schema_version"] == SCHEMA_VERSION == 3
    for record in (summary, on_disk):
        # test_acc is the plain test, as without tta; test_acc_tta is the flip's, beside it
        for key, value in expected.items():
            assert record[key] == pytest.approx(value, abs=1e-6), key
    # the losses tell the two apart even where the two accuracies happen to agree
    assert on_disk["test_loss_tta"] != pytest.approx(on_disk["test_loss"], abs=1e-6)

    scalars = read_scalars(tmp_path / "run" / "tensorboard")
    for key in ("test/acc", "test/acc_tta", "test/loss", "test/loss_tta"):
        assert scalars[key][-1][1] == pytest.approx(on_disk[key.replace("/", "_")]), key
    assert scalars["hp/test_acc_tta"][-1][1] == pytest.approx(on_disk["test_acc_tta"])

    # the same checkpoint through cvexp-eval's function, with and without tta: the plain
    # numbers are the very same, and only tta=flip adds test_acc_tta
    results = {}
    for tta in ("null", "flip"):
        eval_cfg = compose_config(
            "eval",
            [
                f"ckpt_path={tested}",
                f"data.root={data_root}",
                "trainer.accelerator=cpu",
                f"tta={tta}",
            ],
            tmp_path / f"eval-{tta}",
        )
        results[tta] = evaluate(eval_cfg)
    GlobalHydra.instance().clear()
    assert results["null"]["test_acc"] == results["flip"]["test_acc"] == on_disk["test_acc"]
    assert results["null"]["test_loss"] == results["flip"]["test_loss"]
    assert results["null"]["test_acc_tta"] is None and results["null"]["tta"] is None
    assert results["flip"]["test_acc_tta"] == pytest.approx(expected["test_acc_tta"], abs=1e-6)
    assert "test/acc_tta" not in read_scalars(tmp_path / "eval-null" / "tensorboard")


def test_without_tta_the_summary_says_null(compose_train, tmp_path: Path) -> None:
    summary = train(compose_train("trainer.max_epochs=1"))
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["test_acc"] is not None
    assert on_disk["test_acc_tta"] is None and "test_loss_tta" not in on_disk
    scalars = read_scalars(tmp_path / "run" / "tensorboard")
    assert "test/acc" in scalars
    assert not [tag for tag in scalars if "tta" in tag]


@pytest.mark.slow
def test_eval_cli_with_tta_writes_test_acc_tta(tmp_path: Path, data_root: Path) -> None:
    checkpoint = write_tiny_checkpoint(tmp_path / "ckpt" / "tiny.ckpt", "vgg16")
    result = run_cli(
        "cvexp-eval",
        f"ckpt_path={checkpoint}",
        f"data.root={data_root}",
        "trainer.accelerator=cpu",
        "tta=flip",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "test/acc_tta" in result.stdout
    (eval_dir,) = [p.parent for p in (tmp_path / "outputs" / "eval").glob("*/metrics.json")]
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    expected = by_hand(load_classifier(checkpoint)[0], data_root)
    assert metrics["tta"] == "flip"
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=1e-6), key
    scalars = read_scalars(eval_dir / "tensorboard")
    assert scalars["test/acc"][0][1] == pytest.approx(metrics["test_acc"])
    assert scalars["test/acc_tta"][0][1] == pytest.approx(metrics["test_acc_tta"])


def test_an_unknown_tta_is_refused_in_one_sentence(compose_train) -> None:
    assert tuple(mode for mode in TTA_MODES if mode is not None) == TTA_SETTINGS
    for value in ("rotate", "true"):
        with pytest.raises(UserError, match=r"^tta=" + value + r" is not a test-time aug") as error:
            check_settings(compose_train(f"tta={value}"))
        assert str(error.value).count(". ") == 0 and "pass tta=flip" in str(error.value)
    check_settings(compose_train("tta=flip"))
    with pytest.raises(ValueError, match="rotate"):
        ImageClassifier(torch.nn.Linear(1, 1)).set_tta("rotate")


@pytest.mark.slow
def test_eval_cli_refuses_an_unknown_tta(tmp_path: Path) -> None:
    result = run_cli("cvexp-eval", "ckpt_path=any.ckpt", "tta=rotate", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert_one_clear_error(result, "tta=rotate is not a test-time augmentation", "tta=flip")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_compare_shows_the_tta_column_only_when_a_run_has_it(tmp_path: Path) -> None:
    def with_tta(run: Path, value: float) -> None:
        summary = json.loads((run / "summary.json").read_text())
        (run / "summary.json").write_text(json.dumps({**summary, "test_acc_tta": value}))

    plain = [make_run(tmp_path / "a" / f"{s}", [f"seed={s}"], offset=0.01 * s) for s in (1, 2)]
    without = compare(plain, out_dir=tmp_path / "cmp-plain")
    assert "tta" not in without["table"].splitlines()[0] and "(tta)" not in without["table"]
    assert "test_acc_tta_mean" not in without["rows"][0]
    csv_header = (tmp_path / "cmp-plain" / "results.csv").read_text().splitlines()[0]
    assert "tta" not in csv_header

    flipped = [
        make_run(tmp_path / "b" / f"{s}", ["tta=flip", f"seed={s}"], offset=0.01 * s)
        for s in (1, 2)
    ]
    for run, value in zip(flipped, (0.6, 0.7), strict=True):
        with_tta(run, value)
    result = compare([*plain, *flipped], out_dir=tmp_path / "cmp")
    header = result["table"].splitlines()[0]
    assert "| test acc | test acc (tta) |" in header
    rows = {row["configuration"]: row for row in result["rows"]}
    assert rows["tta=flip"]["test_acc_tta_mean"] == pytest.approx(0.65)
    assert rows["tta=flip"]["test_acc_mean"] == pytest.approx(0.515)  # the plain test, as it was
    (other,) = [row for label, row in rows.items() if label != "tta=flip"]
    assert other["test_acc_tta_mean"] is None
    flip_line = next(line for line in result["table"].splitlines() if "| tta=flip |" in line)
    assert "0.6500 ± 0.0707" in flip_line
    csv_header = (tmp_path / "cmp" / "results.csv").read_text().splitlines()[0]
    assert "test_acc_mean,test_acc_std,test_acc_tta_mean,test_acc_tta_std" in csv_header


def test_the_flip_reads_nothing_back_per_test_step(
    tmp_path: Path,
    data_root: Path,
    sync_counter: SyncCounter,  # noqa: F811 (the fixture of test_step_syncs.py)
) -> None:
    """As test_step_syncs.py counts training steps: no host reads from a test batch's start to
    its end, with the extra flipped forward pass and its metrics."""

    def batch_start(trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        sync_counter.active, sync_counter.step = True, batch_idx

    def batch_end(*args: Any) -> None:
        sync_counter.active = False

    sync_counter.on_test_batch_start = batch_start
    sync_counter.on_test_batch_end = batch_end
    classifier, _ = load_classifier(write_tiny_checkpoint(tmp_path / "tiny.ckpt", "vgg16"))
    classifier.set_tta("flip")
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[sync_counter],
    )
    dm = CIFAR10DataModule(str(data_root), download=False, val_size=40, batch_size=8)
    results = trainer.test(classifier, dm, verbose=False)[0]
    assert {"test/acc", "test/acc_tta", "test/loss_tta"} <= set(results)
    assert sync_counter.step == 7  # 60 images in batches of 8, every one counted
    assert not dict(sync_counter.calls), f"host reads in test steps: {dict(sync_counter.calls)}"
