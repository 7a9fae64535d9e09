"""A short run on the real CIFAR-10 copy in ../shared/data (skipped when it is absent)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cvexp.data import CIFAR10DataModule
from cvexp.training import train
from tests.conftest import SHARED_ARCHIVE

pytestmark = [
    pytest.mark.real_data,
    pytest.mark.slow,
    pytest.mark.skipif(
        not SHARED_ARCHIVE.is_file(), reason=f"no CIFAR-10 copy at {SHARED_ARCHIVE}"
    ),
]


@pytest.fixture(scope="module")
def real_root(tmp_path_factory) -> Path:
    """A writable folder holding the shared archive (so the decoded cache can be written beside it)."""
    root = tmp_path_factory.mktemp("cifar10")
    shutil.copy(SHARED_ARCHIVE, root / SHARED_ARCHIVE.name)
    return root


def test_the_real_copy_is_read_in_full(real_root: Path) -> None:
    dm = CIFAR10DataModule(str(real_root), download=False)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.data.train_images.shape == (50_000, 32, 32, 3)
    assert dm.data.test_images.shape == (10_000, 32, 32, 3)
    assert len(dm.val_indices) == 5000 and len(dm.train_indices) == 45_000


def test_vgg16_bn_learns_on_the_real_copy(compose_train, real_root: Path) -> None:
    # the real VGG16-BN (16 layers, batch norm) at an eighth of the width, not the tiny test net
    cfg = compose_train(
        "model.net.width=0.125",
        f"data.root={real_root}",
        "data.val_size=5000",
        "data.batch_size=64",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=240",
        "trainer.limit_val_batches=8",
        "trainer.limit_test_batches=8",
        "model.optimizer.lr=0.02",
        tiny_model=False,
    )
    assert cfg.model.net.batch_norm and cfg.model.net.depth == 16
    summary = train(cfg)
    assert summary["status"] == "completed"
    # 240 steps of 64 images: chance is 10%
    assert summary["best_val_acc"] > 0.2, summary
    assert summary["test_acc"] > 0.2, summary
