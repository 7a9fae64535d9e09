"""Random CIFAR-shaped data in the official batch format, for benchmarks that need no real pixels.

The batch files are written as the real ones were, by Python 2's cPickle: each bytes value (the
(N, 3072) pixel rows above all) is one raw string (BINSTRING). What Python 3's `pickle.dump` writes
at protocol 2 instead, `_codecs.encode(text, "latin1")` with the text in UTF-8, is half as long
again and slower to decode, so it would misrepresent the real data's decoding time and memory;
`python2=False` writes it, to test that such files are read too.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from cvexp.data.formats import OFFICIAL_DIR, TEST_BATCH, TRAIN_BATCHES


class _Python2Pickler(pickle._Pickler):  # the pure-Python pickler: its writers can be changed
    """Protocol 2, with bytes, and ASCII text (numpy's dtype code), written as Python 2 wrote
    its str: (SHORT_)BINSTRING."""

    dispatch: ClassVar[dict[type, Any]] = dict(pickle._Pickler.dispatch)

    def _save_bytes_as_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    def _save_text_as_str(self, obj: str) -> None:
        if obj.isascii():
            self._save_bytes_as_str(obj.encode("ascii"))
        else:  # Python 2's unicode
            pickle._Pickler.save_str(self, obj)

    dispatch[bytes] = _save_bytes_as_str
    dispatch[str] = _save_text_as_str


def write_batch_file(
    path: Path, images: np.ndarray, labels: np.ndarray, *, python2: bool = True
) -> None:
    """One official batch file: images (N, 32, 32, 3) uint8 stored channel-major, labels (N,).

    `python2`: written as the real files are (see the module's docstring); else as Python 3's
    `pickle.dump(batch, f, protocol=2)` writes it.
    """
    batch = {
        b"batch_label": path.name.encode(),
        b"labels": [int(label) for label in labels],
        b"data": images.transpose(0, 3, 1, 2).reshape(len(images), -1),  # (N, 3072) rows
        b"filenames": [f"{i}.png".encode() for i in range(len(images))],
    }
    with path.open("wb") as f:
        if python2:
            _Python2Pickler(f, protocol=2).dump(batch)
        else:
            pickle.dump(batch, f, protocol=2)


def write_synthetic_cifar(
    root: Path,
    *,
    train_size: int = 50_000,
    test_size: int = 10_000,
    seed: int = 0,
    python2: bool = True,
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
        write_batch_file(folder / name, images, labels, python2=python2)
    return root
