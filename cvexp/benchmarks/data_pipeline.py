"""Images per second delivered to the training step, augmented and normalised: ours vs per-sample PIL.

Ours: the CIFAR10DataModule's train loader (uint8 batches gathered by index) followed by
what a training step gets in `on_after_batch_transfer` (random crop with padding 4,
horizontal flip, to float) and the nets' own normalisation, on the device.

Baseline: what torchvision.datasets.CIFAR10 users write, a per-sample Dataset over the
same uint8 images, PIL transforms (RandomCrop(32, padding=4), RandomHorizontalFlip,
ToTensor, Normalize) and a DataLoader with the same batch size and workers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from cvexp.benchmarks.timing import interleaved_medians, synchronize, timed
from cvexp.data import CIFAR10DataModule
from cvexp.models.normalize import CIFAR10_MEAN, CIFAR10_STD, Normalize


class PerSamplePIL(Dataset):
    """torchvision.datasets.CIFAR10's way: one uint8 HWC image -> PIL -> transforms, per index."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> None:
        self.images, self.labels, self.indices = images.numpy(), labels.tolist(), indices.tolist()
        self.transform = transforms.Compose(
            [
                transforms.RandomCrop(32, padding=4),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD),
            ]
        )

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int]:
        index = self.indices[position]
        return self.transform(Image.fromarray(self.images[index])), self.labels[index]


def consume(batches: Any, device: torch.device, limit: int, prepare: Callable) -> Callable[[], int]:
    """A runner that pulls `limit` images from a fresh iterator, prepared as a step receives them."""

    def run() -> int:
        seen = 0
        for images, labels in batches():
            prepare(images.to(device, non_blocking=True))  # what the step would receive
            labels.to(device, non_blocking=True)
            seen += len(labels)
            if seen >= limit:
                break
        synchronize(device)
        return seen

    return run


def measure(
    datamodule: CIFAR10DataModule,
    *,
    images: int = 10_000,
    repeats: int = 3,
    device: str = "cpu",
) -> dict[str, Any]:
    """Both pipelines over the same training images (`images` per repeat, drawn from the set-up
    DataModule's train split, same batch size and workers); ratio of the medians, ours / baseline."""
    dev = torch.device(device)
    num_workers = datamodule.hparams.num_workers
    data = datamodule.data
    normalize = Normalize(CIFAR10_MEAN, CIFAR10_STD).to(dev)
    baseline = DataLoader(
        PerSamplePIL(data.train_images, data.train_labels, datamodule.train_indices),
        batch_size=datamodule.hparams.batch_size,
        shuffle=True,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )
    candidates = {
        "ours": timed(
            consume(
                datamodule.train_dataloader,
                dev,
                images,
                lambda x: normalize(datamodule.to_model_input(x, train=True)),
            ),
            dev,
        ),
        "baseline": timed(consume(lambda: baseline, dev, images, lambda x: x), dev),
    }
    for measure_once in candidates.values():  # warm-up
        measure_once()
    rates = interleaved_medians(candidates, repeats=repeats)
    return {
        "ratio": rates["ours"]["median"] / rates["baseline"]["median"],
        "ours_images_per_s": rates["ours"],
        "baseline_images_per_s": rates["baseline"],
        "images_per_repeat": images,
        "batch_size": datamodule.hparams.batch_size,
        "num_workers": num_workers,
        "repeats": repeats,
    }
