"""Fixtures: tiny CIFAR-shaped datasets in every supported format, and the real composed configs."""

from __future__ import annotations

import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig
from PIL import Image

# Under pytest-xdist every core already runs a worker: one thread per worker and per command it
# starts (they inherit OMP_NUM_THREADS), or torch's thread pools fight over the cores and spin.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

from cvexp.benchmarks.synthetic import write_batch_file
from cvexp.data.formats import CLASSES
from cvexp.runtime.config import compose_config, register_resolvers

TRAIN_PER_CLASS = 24
TEST_PER_CLASS = 6
SHARED_ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"
BIN = Path(sys.executable).parent

TEST_CONF = Path(__file__).resolve().parent / "conf"
# The tiny test model (tests/conf/model/tiny.yaml, a VGG of a few thousand parameters); a
# later model=... override replaces it in tests that are about a real model.
TINY_MODEL = [f"hydra.searchpath=[file://{TEST_CONF}]", "model=tiny"]

# Fast CPU settings for the real configs: tiny batches, a couple of steps, no progress bar.
FAST = [
    *TINY_MODEL,
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.num_sanity_val_steps=0",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "callbacks.progress_bar=null",
    "data.batch_size=8",
    "data.val_size=40",
]

# The same, as overrides for the console scripts run on a tiny dataset in ./data: one epoch.
CLI_TINY = [
    *(o if o != "trainer.max_epochs=2" else "trainer.max_epochs=1" for o in FAST),
    "data.download=false",
]


@dataclass(frozen=True)
class TinyCifar:
    """Images (N, 32, 32, 3) uint8 and labels, in the canonical (class, then source) order."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    # source order: the shuffled order in which the batch files store the images
    train_source_order: np.ndarray
    test_source_order: np.ndarray


def _make_split(rng: np.random.Generator, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    labels = np.repeat(np.arange(len(CLASSES)), per_class)
    images = rng.integers(0, 100, size=(len(labels), 32, 32, 3), dtype=np.uint8)
    for c in range(len(CLASSES)):  # a class-dependent tint, so that a net can learn something
        images[labels == c, :, :, c % 3] += np.uint8(15 * c)
    return images, labels


@pytest.fixture(scope="session")
def tiny() -> TinyCifar:
    """A tiny CIFAR-10: 24 train and 6 test images per class."""
    rng = np.random.default_rng(0)
    train_images, train_labels = _make_split(rng, TRAIN_PER_CLASS)
    test_images, test_labels = _make_split(rng, TEST_PER_CLASS)
    return TinyCifar(
        train_images,
        train_labels,
        test_images,
        test_labels,
        _interleaving(rng, train_labels),
        _interleaving(rng, test_labels),
    )


def _interleaving(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """A shuffled source order that keeps each class's images in canonical order.

    Readers sort by class, stably, so reading this source order gives back the canonical arrays.
    """
    shuffled = rng.permutation(labels)
    next_of_class = {c: iter(np.flatnonzero(labels == c)) for c in np.unique(labels)}
    return np.array([next(next_of_class[c]) for c in shuffled])


def write_batches_dir(root: Path, data: TinyCifar) -> Path:
    """The official layout: cifar-10-batches-py/data_batch_1..5 and test_batch, shuffled."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_order = np.array_split(data.train_source_order, 5)
    parts = [
        (f"data_batch_{i + 1}", data.train_images, data.train_labels, idx)
        for i, idx in enumerate(train_order)
    ]
    parts.append(("test_batch", data.test_images, data.test_labels, data.test_source_order))
    for name, images, labels, idx in parts:
        write_batch_file(folder / name, images[idx], labels[idx])
    return folder


def write_official_tar(root: Path, data: TinyCifar) -> Path:
    """cifar-10-python.tar.gz holding cifar-10-batches-py/."""
    staging = root / "_staging"
    folder = write_batches_dir(staging, data)
    archive = root / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    shutil.rmtree(staging)
    return archive


def _image_files(data: TinyCifar, suffix: str) -> list[tuple[str, bytes]]:
    """(relative path, encoded bytes) for every image; file names follow the source order."""
    files = []
    for split, images, labels, order in (
        ("train", data.train_images, data.train_labels, data.train_source_order),
        ("test", data.test_images, data.test_labels, data.test_source_order),
    ):
        position = np.empty_like(order)
        position[order] = np.arange(
            len(order)
        )  # where each canonical image sits in the source order
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="PNG" if suffix == ".png" else "JPEG")
            files.append((f"{split}/{CLASSES[label]}/{position[i]:05d}{suffix}", buffer.getvalue()))
    return files


def write_image_tree(root: Path, data: TinyCifar, suffix: str = ".png") -> Path:
    """train/<class>/*.png and test/<class>/*.png."""
    for rel, payload in _image_files(data, suffix):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(payload)
    return root


def write_image_tar(root: Path, data: TinyCifar, name: str = "cifar10-png.tar.gz") -> Path:
    """The image-folder tree packed as a .tar.gz, under a top-level folder as exports often are."""
    root.mkdir(parents=True, exist_ok=True)
    archive = root / name
    with tarfile.open(archive, "w:gz") as tar:
        for rel, payload in _image_files(data, ".png"):
            info = tarfile.TarInfo(f"cifar10/{rel}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return archive


WRITERS: dict[str, Callable[[Path, TinyCifar], Path]] = {
    "batches-dir": write_batches_dir,
    "batches-tar": write_official_tar,
    "image-dir": write_image_tree,
    "image-tar": write_image_tar,
}


@pytest.fixture(autouse=True)
def _no_own_config_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's CVEXP_CONFIG_DIR (README, "Your own configs") never reaches a test."""
    monkeypatch.delenv("CVEXP_CONFIG_DIR", raising=False)


@pytest.fixture
def data_root(tmp_path: Path, tiny: TinyCifar) -> Path:
    """A data root holding the tiny dataset as the official extracted batches."""
    root = tmp_path / "data"
    write_batches_dir(root, tiny)
    return root


@pytest.fixture
def compose_train(tmp_path: Path, data_root: Path) -> Callable[..., DictConfig]:
    """Compose the real train config, with fast CPU overrides, into a run dir under tmp_path."""
    register_resolvers()

    def _compose(
        *overrides: str,
        run_dir: Path | None = None,
        config_name: str = "train",
        tiny_model: bool = True,
    ) -> DictConfig:
        fast = FAST if tiny_model else [o for o in FAST if o not in TINY_MODEL]
        return compose_config(
            config_name,
            [*fast, f"data.root={data_root}", *overrides],
            run_dir or tmp_path / "run",
        )

    yield _compose
    GlobalHydra.instance().clear()


def run_cli(
    command: str,
    *args: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    file_size_limit: int | None = None,
) -> subprocess.CompletedProcess:
    """Run a console script of this install as a subprocess; `file_size_limit` (bytes) makes
    larger writes fail as on a full disk (RLIMIT_FSIZE: Python ignores SIGXFSZ, writes fail)."""

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    unset = ("CVEXP_DATA", "CVEXP_CONFIG_DIR", "HYDRA_FULL_ERROR")
    full_env = {k: v for k, v in os.environ.items() if k not in unset}
    full_env.update(env or {})
    return subprocess.run(
        [str(BIN / command), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=limit_file_size if file_size_limit else None,
    )


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


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, tiny) -> tuple[Path, Path, dict]:
    """One real `cvexp-train` run in a fresh working directory: (cwd, run dir, summary)."""
    cwd = tmp_path_factory.mktemp("cli")
    data_root = cwd / "data"
    write_batches_dir(data_root, tiny)
    result = run_cli("cvexp-train", *CLI_TINY, cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    (run_dir,) = [p for p in (cwd / "outputs").glob("*/*") if p.is_dir()]
    return cwd, run_dir, json.loads((run_dir / "summary.json").read_text())
