"""The DataModule and file formats: detection, identical decoding, split, augmentation, errors."""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import stat
import tarfile
from pathlib import Path

import pytest
import torch

from cvexp.data import CIFAR10DataModule
from cvexp.data.augment import augment_batch, random_crop_flip, to_float_chw
from cvexp.data.datamodule import ShardedBatchSampler, stratified_split
from cvexp.data.formats import CLASSES, find_source, read_source
from cvexp.errors import UserError
from tests.conftest import (
    TEST_PER_CLASS,
    TRAIN_PER_CLASS,
    WRITERS,
    snapshot,
    write_batches_dir,
    write_image_tree,
)


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_every_format_yields_the_same_tensors(tmp_path: Path, tiny, kind: str) -> None:
    root = tmp_path / kind
    WRITERS[kind](root, tiny)
    source = find_source(root)
    assert source is not None and source.kind == kind
    data = read_source(source)
    assert data.train_images.dtype == torch.uint8 and data.train_images.shape == (
        len(CLASSES) * TRAIN_PER_CLASS,
        32,
        32,
        3,
    )
    assert data.test_images.shape == (len(CLASSES) * TEST_PER_CLASS, 32, 32, 3)
    assert torch.equal(data.train_images, torch.from_numpy(tiny.train_images))
    assert torch.equal(data.train_labels, torch.from_numpy(tiny.train_labels))
    assert torch.equal(data.test_images, torch.from_numpy(tiny.test_images))
    assert torch.equal(data.test_labels, torch.from_numpy(tiny.test_labels))


def test_jpeg_tree_is_read(tmp_path: Path, tiny) -> None:
    data = read_source(find_source(write_image_tree(tmp_path / "jpg", tiny, suffix=".jpg")))
    assert data.train_images.shape == tiny.train_images.shape
    assert torch.equal(data.train_labels, torch.from_numpy(tiny.train_labels))
    # JPEG is lossy (and noise is its worst case), but each image stays nearest to its original
    decoded, original = data.train_images.float(), torch.from_numpy(tiny.train_images).float()
    own = (decoded - original).abs().mean(dim=(1, 2, 3))
    other = (decoded - original.roll(1, dims=0)).abs().mean(dim=(1, 2, 3))
    assert bool((own < other).all())


def test_datamodule_decodes_once_then_reads_the_cache(data_root: Path, monkeypatch) -> None:
    first = CIFAR10DataModule(str(data_root), download=False, val_size=40)
    first.prepare_data()
    first.setup("fit")
    assert list((data_root / ".cvexp_cache").glob("*.pt"))

    def no_decoding(source):
        raise AssertionError("decoded again although the cache is valid")

    monkeypatch.setattr("cvexp.data.datamodule.read_source", no_decoding)
    second = CIFAR10DataModule(str(data_root), download=False, val_size=40)
    second.prepare_data()
    second.setup("fit")
    assert torch.equal(first.data.train_images, second.data.train_images)


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_cache_file_mode_follows_the_umask(data_root: Path, umask: int) -> None:
    previous = os.umask(umask)
    try:
        CIFAR10DataModule(str(data_root), download=False, val_size=40).prepare_data()
    finally:
        os.umask(previous)
    (cache,) = (data_root / ".cvexp_cache").glob("*.pt")
    assert stat.S_IMODE(cache.stat().st_mode) == 0o666 & ~umask  # as a plain open makes it
    assert not list((data_root / ".cvexp_cache").glob("*.tmp"))


def test_cache_is_rebuilt_when_the_files_change(data_root: Path, tiny) -> None:
    CIFAR10DataModule(str(data_root), download=False, val_size=40).prepare_data()
    batch = data_root / "cifar-10-batches-py" / "test_batch"
    content = pickle.loads(batch.read_bytes(), encoding="bytes")
    content[b"data"] = 255 - content[b"data"]
    batch.write_bytes(pickle.dumps(content, protocol=2))
    fresh = CIFAR10DataModule(str(data_root), download=False, val_size=40)
    fresh.setup("test")
    assert torch.equal(fresh.data.test_images, 255 - torch.from_numpy(tiny.test_images))


def test_split_is_stratified_disjoint_and_reproducible() -> None:
    labels = torch.arange(10).repeat_interleave(5000)  # the official train set's class counts
    train, val = stratified_split(labels, 5000, seed=7)
    assert len(val) == 5000 and len(train) == 45000
    assert not set(train.tolist()) & set(val.tolist())
    assert torch.bincount(labels[val]).tolist() == [500] * 10
    again_train, again_val = stratified_split(labels, 5000, seed=7)
    assert torch.equal(val, again_val) and torch.equal(train, again_train)
    assert not torch.equal(stratified_split(labels, 5000, seed=8)[1], val)
    # uneven sizes still sum exactly
    assert len(stratified_split(labels, 4321, seed=0)[1]) == 4321


def test_datamodule_split_keeps_the_test_set(data_root: Path) -> None:
    dm = CIFAR10DataModule(str(data_root), download=False, val_size=40, seed=3)
    dm.setup("fit")
    assert len(dm.val_indices) == 40 and len(dm.train_indices) == 240 - 40
    assert torch.bincount(dm.data.train_labels[dm.val_indices]).tolist() == [4] * 10
    assert len(dm.test_dataloader().dataset) == len(
        dm.data.test_labels
    )  # the whole official test set
    record = dm.split_record()
    assert record["val_size"] == 40 and record["seed"] == 3
    expected = hashlib.sha256(dm.val_indices.numpy().tobytes()).hexdigest()
    assert record["val_indices_sha256"] == expected


def test_loaders_cover_their_split_and_ranks_are_disjoint(data_root: Path) -> None:
    dm = CIFAR10DataModule(str(data_root), download=False, val_size=40, batch_size=16)
    dm.setup("fit")
    seen = torch.cat([labels for _, labels in dm.val_dataloader()])
    assert len(seen) == 40
    x, y = next(iter(dm.train_dataloader()))
    assert x.dtype == torch.uint8 and x.shape == (16, 32, 32, 3) and y.shape == (16,)
    ranks = [
        ShardedBatchSampler(200, 8, shuffle=True, drop_last=True, seed=1, rank=r, world_size=2)
        for r in (0, 1)
    ]
    positions = [[i for batch in sampler for i in batch] for sampler in ranks]
    assert len(positions[0]) == len(positions[1]) == 96
    assert not set(positions[0]) & set(positions[1])
    ranks[0].set_epoch(1)
    assert [i for batch in ranks[0] for i in batch] != positions[0]  # a new order every epoch


def test_augmentation_changes_train_batches_only(data_root: Path) -> None:
    dm = CIFAR10DataModule(str(data_root), download=False, val_size=40, batch_size=32)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    # outside training (no trainer, or validating) the batch is only converted
    images, _ = dm.on_after_batch_transfer(batch, 0)
    assert images.dtype == torch.float32 and images.shape == (32, 3, 32, 32)
    assert torch.equal(images, batch[0].permute(0, 3, 1, 2).float() / 255)
    torch.manual_seed(0)
    augmented = augment_batch(batch[0])
    assert augmented.shape == images.shape and augmented.min() >= 0 and augmented.max() <= 1
    assert not torch.equal(augmented, images)


def test_random_crop_flip_is_a_shifted_window_of_the_padded_image_maybe_mirrored() -> None:
    images = torch.arange(64 * 8 * 8 * 3, dtype=torch.int64).view(64, 8, 8, 3)  # (B, H, W, C)
    crops = random_crop_flip(images, padding=2, hflip=True)
    padded = torch.nn.functional.pad(images.permute(0, 3, 1, 2), (2, 2, 2, 2))  # (B, C, 12, 12)
    mirrored = 0
    for b in range(64):
        crop = crops[b].permute(2, 0, 1)  # (C, H, W)
        windows = [padded[b, :, i : i + 8, j : j + 8] for i in range(5) for j in range(5)]
        plain = any(torch.equal(crop, w) for w in windows)
        flipped = any(torch.equal(crop, w.flip(-1)) for w in windows)
        assert plain or flipped
        mirrored += flipped and not plain
    assert 10 < mirrored < 54  # about half, independently per image
    # uint8 batches take the same path to the same result
    again = random_crop_flip(
        images.to(torch.uint8), 2, generator=torch.Generator().manual_seed(3)
    ).to(torch.int64)
    reference = random_crop_flip(images, 2, generator=torch.Generator().manual_seed(3)) % 256
    assert torch.equal(again, reference)


def test_to_float_chw_matches_permute_and_scale() -> None:
    images = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8)
    converted = to_float_chw(images)
    assert converted.is_contiguous()
    assert torch.equal(converted, images.permute(0, 3, 1, 2).float() / 255)


# ------------------------------------------------------------------ errors a user can cause


def test_missing_dataset_without_download(tmp_path: Path) -> None:
    dm = CIFAR10DataModule(str(tmp_path / "nothing"), download=False)
    with pytest.raises(
        UserError, match=r"No CIFAR-10 found at .*data.root .*CVEXP_DATA.*data.download=true"
    ):
        dm.prepare_data()


def test_failed_download_names_the_offline_fix(tmp_path: Path) -> None:
    dm = CIFAR10DataModule(
        str(tmp_path / "d"), download=True, download_url="http://127.0.0.1:9/cifar-10-python.tar.gz"
    )
    with pytest.raises(UserError, match=r"may be offline.*data.root.*CVEXP_DATA"):
        dm.prepare_data()
    assert not list((tmp_path / "d").glob("*"))  # no partial file left behind


def test_download_verifies_the_checksum(tmp_path: Path, tiny) -> None:
    from tests.conftest import write_official_tar

    archive = write_official_tar(tmp_path / "server", tiny)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkey_root = tmp_path / "fetched"
    from cvexp.data.download import download_official

    with pytest.raises(UserError, match="md5"):
        download_official(monkey_root, url=archive.as_uri(), md5="0" * 32)
    assert not list(monkey_root.glob("*"))
    path = download_official(monkey_root, url=archive.as_uri(), md5=md5)
    assert path.name == "cifar-10-python.tar.gz"
    dm = CIFAR10DataModule(str(monkey_root), download=False, val_size=40)
    dm.setup("fit")
    assert torch.equal(dm.data.train_labels, torch.from_numpy(tiny.train_labels))


def test_truncated_batch_file(data_root: Path) -> None:
    batch = data_root / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:1000])
    with pytest.raises(UserError, match="data_batch_3 is truncated or corrupt"):
        read_source(find_source(data_root))


def test_batch_file_with_a_malicious_pickle_is_refused(data_root: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (data_root / "cifar-10-batches-py" / "test_batch").write_bytes(
        pickle.dumps({b"data": Exploit()})
    )
    with pytest.raises(UserError, match="test_batch is truncated or corrupt"):
        read_source(find_source(data_root))
    assert not marker.exists()


def test_corrupt_archive(tmp_path: Path, tiny) -> None:
    from tests.conftest import write_official_tar

    archive = write_official_tar(tmp_path, tiny)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        read_source(find_source(tmp_path))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda root: __import__("shutil").rmtree(root / "train" / "cat"),
            "no train images for class cat",
        ),
        (
            lambda root: (root / "test" / "dog" / "notes.txt").write_text("x"),
            "notes.txt is not an image",
        ),
        (
            lambda root: (root / "train" / "ship" / "00003.png").write_bytes(b"not a png"),
            "00003.png is not a readable image",
        ),
        (
            lambda root: (
                __import__("PIL.Image")
                .Image.new("RGB", (40, 40))
                .save(root / "train" / "frog" / "big.png")
            ),
            "big.png is 40x40 pixels; CIFAR-10 images must be 32x32",
        ),
        (lambda root: (root / "train" / "unicorn").mkdir(), "not CIFAR-10 classes \\(unicorn\\)"),
        (
            lambda root: _copy_an_image(root / "train" / "cat", "train/cat/more/x.png"),
            r"more/x.png is in a folder inside .*cat; .*move it up into .*cat or remove it",
        ),
        (
            lambda root: _touch_text(root, "test/dog/old/a.txt"),
            r"old/a.txt is in a folder inside .*dog",
        ),
        (
            lambda root: _copy_an_image(root / "train" / "cat", "train/x.png"),
            r"train/x.png is not in a class folder; move it into .*train/<class>/ or remove it",
        ),
        (
            lambda root: (root / "train" / "cat" / "zz.png").symlink_to(root / "gone.png"),
            r"zz.png is a broken symbolic link.*gone.png",
        ),
    ],
    ids=[
        "missing-class",
        "non-image-file",
        "corrupt-image",
        "wrong-size",
        "unknown-class",
        "nested-image",
        "nested-other-file",
        "image-outside-class-folders",
        "broken-link",
    ],
)
def test_bad_image_folders(tmp_path: Path, tiny, damage, message: str) -> None:
    root = write_image_tree(tmp_path / "tree", tiny)
    damage(root)
    with pytest.raises(UserError, match=message):
        read_source(find_source(root))


def _copy_an_image(class_dir: Path, rel: str) -> None:
    """Copy the first image of `class_dir` to `rel` under the tree that holds it."""
    target = class_dir.parents[1] / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sorted(class_dir.glob("*.png"))[0], target)


def _touch_text(root: Path, rel: str) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text("x")


def test_hidden_files_and_empty_subfolders_in_class_folders_are_fine(tmp_path: Path, tiny) -> None:
    root = write_image_tree(tmp_path / "tree", tiny)
    (root / "train" / "cat" / ".DS_Store").write_text("x")
    (root / "train" / "cat" / ".thumbnails").mkdir()
    (root / "train" / "cat" / ".thumbnails" / "00001.png").write_bytes(b"x")
    (root / "train" / "cat" / "empty").mkdir()
    assert torch.equal(
        read_source(find_source(root)).train_labels, torch.from_numpy(tiny.train_labels)
    )


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (
            "cifar10/train/cat/more/x.png",
            r"cifar10/train/cat/more/x.png is in a folder inside train/cat/",
        ),
        ("cifar10/test/x.png", r"cifar10/test/x.png is not in a class folder"),
    ],
    ids=["nested-image", "image-outside-class-folders"],
)
def test_bad_image_archives(tmp_path: Path, tiny, member: str, message: str) -> None:
    tree = write_image_tree(tmp_path / "tree", tiny)
    archive = tmp_path / "data" / "cifar10.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname="cifar10")
        image = sorted((tree / "train" / "cat").glob("*.png"))[0]
        tar.add(image, arcname="cifar10/train/cat/.hidden/y.png")  # hidden: left out
        tar.add(image, arcname=member)
    with pytest.raises(UserError, match=message):
        read_source(find_source(archive.parent))


def _loose_images(tree: Path) -> Path:
    """A folder holding someone's own images, not in the CIFAR-10 layout: loose/holiday/*.png."""
    (tree / "train" / "cat").rename(tree.parent / "holiday")
    (tree.parent / "loose").mkdir()
    return (tree.parent / "holiday").rename(tree.parent / "loose" / "holiday").parent


def _download_must_not_run(*args, **kwargs):
    raise AssertionError("the official archive was downloaded into a folder that holds images")


@pytest.mark.parametrize(
    ("arrange", "message"),
    [
        (
            lambda tree: shutil.rmtree(tree / "test") or tree,
            r"tree has train/ but no test/; add test/<class>/ images",
        ),
        (
            lambda tree: shutil.rmtree(tree / "train") or tree,
            r"tree has test/ but no train/; add train/<class>/ images",
        ),
        (
            lambda tree: tree / "train",
            r"tree/train looks like the train/ split itself \(its folders are class names\); "
            r"pass its parent folder as data.root",
        ),
        (
            lambda tree: tree / "test",
            r"tree/test looks like the test/ split itself",
        ),
        (
            lambda tree: (tree / "train").rename(tree.parent / "cats_and_dogs"),
            r"cats_and_dogs looks like a single split",
        ),
        (
            _loose_images,
            r"loose holds images \(e\.g\. holiday/.*\.png\) that are not in the train/<class>/ "
            r"and test/<class>/ layout",
        ),
    ],
    ids=[
        "train-only",
        "test-only",
        "root-is-train",
        "root-is-test",
        "root-is-a-split",
        "loose-images",
    ],
)
@pytest.mark.parametrize("download", [True, False])
def test_wrong_image_folder_layout_is_named_and_never_downloaded_into(
    tmp_path: Path, tiny, monkeypatch, arrange, message: str, download: bool
) -> None:
    monkeypatch.setattr("cvexp.data.datamodule.download_official", _download_must_not_run)
    root = arrange(write_image_tree(tmp_path / "tree", tiny))
    before = snapshot(tmp_path)
    dm = CIFAR10DataModule(str(root), download=download, val_size=40)
    with pytest.raises(UserError, match=message):
        dm.prepare_data()
    assert snapshot(tmp_path) == before  # nothing written, nothing lost


@pytest.mark.parametrize("val_size", [0, -5, 50_000, 60_000])
def test_val_size_out_of_range(tmp_path: Path, val_size: int) -> None:
    with pytest.raises(UserError, match=r"data.val_size=.* is out of range"):
        CIFAR10DataModule(str(tmp_path), val_size=val_size)


def test_val_size_larger_than_a_small_train_set(data_root: Path) -> None:
    dm = CIFAR10DataModule(str(data_root), download=False, val_size=240)
    with pytest.raises(UserError, match="leaves no training images"):
        dm.setup("fit")


def test_wrong_types_are_named(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"data\.batch_size must be an integer, got 'abc'"):
        CIFAR10DataModule(str(tmp_path), batch_size="abc")


def test_batch_size_must_divide_over_devices(data_root: Path) -> None:
    dm = CIFAR10DataModule(str(data_root), download=False, batch_size=30)
    assert dm.per_device_batch_size(3) == 10
    with pytest.raises(UserError, match="not divisible by the 4 devices"):
        dm.per_device_batch_size(4)


def test_tar_of_something_else(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("hello")
    with tarfile.open(tmp_path / "other.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "readme.txt", arcname="readme.txt")
    with pytest.raises(UserError, match="holds neither"):
        find_source(tmp_path)


def test_batches_are_read_without_checksums(tmp_path: Path, tiny) -> None:
    # tiny fixtures differ from the official md5s, yet read fine: reading never depends on checksums
    folder = write_batches_dir(tmp_path, tiny)
    assert read_source(find_source(folder)).train_images.shape[0] == len(tiny.train_labels)
