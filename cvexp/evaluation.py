"""Test a checkpoint on the official CIFAR-10 test set; write metrics, per-class accuracy and a
confusion matrix (what `cvexp-eval` runs)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.tensorboard import SummaryWriter

from cvexp.checkpoint import load_classifier
from cvexp.data.formats import CLASSES
from cvexp.errors import UserError
from cvexp.models.outputs import logit_count
from cvexp.trainer import quiet_lightning
from cvexp.viz.confusion import confusion_matrix_figure, plot_confusion_matrix


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Test `cfg.ckpt_path` on the official test set and write the results into the output dir."""
    if not cfg.get("ckpt_path"):
        raise UserError("cvexp-eval needs a checkpoint; pass ckpt_path=<path to a .ckpt file>.")
    out_dir = Path(cfg.paths.output_dir)
    classifier, checkpoint = load_classifier(cfg.ckpt_path, trust=cfg.trust_checkpoint)
    classes = logit_count(classifier)
    if classes != len(CLASSES):  # before the test and before anything is written
        raise UserError(
            f"{cfg.ckpt_path} is a model of {classes} classes, but the CIFAR-10 test set has "
            f"{len(CLASSES)}; pass a checkpoint trained with model.num_classes={len(CLASSES)} "
            "(the default)."
        )
    datamodule: L.LightningDataModule = instantiate(cfg.data)
    quiet_lightning()
    trainer: L.Trainer = instantiate(
        cfg.trainer, logger=False, callbacks=[], enable_checkpointing=False
    )
    classifier.set_tta(cfg.get("tta"))  # test/acc_tta beside test/acc, if any
    results = trainer.test(classifier, datamodule=datamodule, verbose=False)[0]
    confusion = classifier.confusion_matrix().cpu()
    per_class = (confusion.diag().double() / confusion.sum(dim=1).clamp(min=1)).tolist()
    metrics = {
        "ckpt_path": str(Path(cfg.ckpt_path).resolve()),
        "epoch": checkpoint.get("epoch"),
        "test_acc": results["test/acc"],
        "test_loss": results["test/loss"],
        # with test-time augmentation (tta=flip): the mean logits of each image and its flip;
        # test_acc above is the plain test either way
        "tta": cfg.get("tta"),
        "test_acc_tta": results.get("test/acc_tta"),
        "test_loss_tta": results.get("test/loss_tta"),
        "test_images": int(confusion.sum()),
        "per_class_accuracy": dict(zip(CLASSES, per_class, strict=True)),
        "confusion_matrix": confusion.tolist(),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    with (out_dir / "per_class_accuracy.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "accuracy", "images"])
        for name, acc, row in zip(CLASSES, per_class, confusion.sum(dim=1).tolist(), strict=True):
            writer.writerow([name, f"{acc:.4f}", row])
    with (out_dir / "confusion_matrix.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *CLASSES])
        for name, row in zip(CLASSES, confusion.tolist(), strict=True):
            writer.writerow([name, *row])
    title = f"{Path(cfg.ckpt_path).name}: test accuracy {metrics['test_acc']:.2%}"
    plot_confusion_matrix(confusion, CLASSES, out_dir / "confusion_matrix.png", title=title)
    log_to_tensorboard(out_dir / "tensorboard", confusion, metrics, title)
    with_tta = (
        ""
        if metrics["test_acc_tta"] is None
        else f", test/acc_tta {metrics['test_acc_tta']:.4f} (tta={metrics['tta']})"
    )
    print(
        f"test/acc {metrics['test_acc']:.4f}{with_tta} on {metrics['test_images']} images; "
        f"results in {out_dir}"
    )
    return metrics


def log_to_tensorboard(
    tb_dir: Path, confusion: torch.Tensor, metrics: dict[str, Any], title: str
) -> None:
    """The same results for TensorBoard: test/acc (and test/acc_tta with tta), per-class
    accuracy, and the confusion-matrix figure (of the plain test)."""
    writer = SummaryWriter(str(tb_dir))
    writer.add_scalar("test/acc", metrics["test_acc"], 0)
    if metrics.get("test_acc_tta") is not None:
        writer.add_scalar("test/acc_tta", metrics["test_acc_tta"], 0)
    for name, accuracy in metrics["per_class_accuracy"].items():
        writer.add_scalar(f"test/acc_per_class/{name}", accuracy, 0)
    writer.add_figure(
        "test/confusion_matrix", confusion_matrix_figure(confusion, CLASSES, title=title), 0
    )
    writer.close()
