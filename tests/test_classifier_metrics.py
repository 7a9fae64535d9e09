"""The epoch figures ImageClassifier logs are means over images, whatever the batch cut."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from cvexp.classifier import ImageClassifier
from cvexp.models.vgg import VGG


@pytest.mark.parametrize("stage", ["validate", "test"])
def test_epoch_loss_and_accuracy_weigh_every_image_once(stage: str) -> None:
    torch.manual_seed(0)
    images, labels = torch.rand(10, 3, 32, 32), torch.randint(0, 10, (10,))
    # batches of 4, 4 and 2: an unweighted mean of batch means would differ from the true one
    loader = DataLoader(TensorDataset(images, labels), batch_size=4)
    net = VGG(depth=11, width=0.03125, head_width=16, dropout=0.0).eval()
    with torch.no_grad():
        logits = net(images)
    expected_loss = F.cross_entropy(logits, labels).item()
    expected_acc = (logits.argmax(1) == labels).float().mean().item()
    batch_means = [F.cross_entropy(logits[i : i + 4], labels[i : i + 4]).item() for i in (0, 4, 8)]
    assert abs(sum(batch_means) / 3 - expected_loss) > 1e-3  # the cut matters for this data

    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    (metrics,) = getattr(trainer, stage)(ImageClassifier(net), loader)

    prefix = "val" if stage == "validate" else "test"
    assert metrics[f"{prefix}/loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert metrics[f"{prefix}/acc"] == pytest.approx(expected_acc)
