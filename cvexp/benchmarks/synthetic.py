"""Random CIFAR-shaped data in the official batch format, for benchmarks that need no real pixels."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from cvexp.data.formats import OFFICIAL_DIR, TEST_BATCH, TRAIN_BATCHES


def write_batch_file(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """One official batch file: images (N, 32, 32, 3) uint8 stored channel-major, labels (N,)."""
    batch = {
        b"batch_label": path.name.encode(),
        b"labels": [int(label) for label in labels],
        b"data": images.transpose(0, 3, 1, 2).reshape(len(images), -1),  # (N, 3072) rows
        b"filenames": [f"{i}.png".encode() for i in range(len(images))],
    }
    with path.open("wb") as f:
        pickle.dump(batch, f, protocol=2)


def write_synthetic_cifar(
    root: Path, *, train_size: int = 50_000, test_size: int = 10_000, seed: int = 0
) -> Path:
    """`root/cifar-10-batches-py/` with uniform random pixels and balanced labels; returns root."""
    rng = np.random.default_rng(seed)
    folder = root / OFFICIAL_DIR
    folder.mkdir(parents=True, exist_ok=True)
    train_parts = np.array_split(np.arange(train_size), len(TRAIN_BATCHES))
    for name, part in (*zip(TRAIN_BATCHES, train_parts, strict=True), (TEST_BATCH, test_size)):
        n = part if isinstance(part, int) else len(part)
        images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        labels = rng.permutation(np.arange(n) % 10)
        write_batch_file(folder / name, images, labels)
    return root
