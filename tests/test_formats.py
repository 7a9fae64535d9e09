"""Decoding each source format: bit for bit what a straightforward decode gives (whatever the
pickle's writer or the archive's member order), into one copy of the images' memory."""

from __future__ import annotations

import gc
import io
import os
import pickle
import pickletools
import random
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cvexp.benchmarks.synthetic import write_batch_file
from cvexp.data import batch_files, formats
from cvexp.data.formats import CLASSES, find_source, read_source
from cvexp.data.formats import _release_freed_memory as release_freed_memory
from cvexp.errors import UserError

TRAIN_SIZES = (37, 50, 3, 61, 9)  # unequal batch files, as a hand-made copy might have
TEST_SIZE = 23


# ---------------------------------------------------------------------------------------------
# Generated data and the straightforward decodes to compare against
# ---------------------------------------------------------------------------------------------


def random_split(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n random images (N, 32, 32, 3) uint8 and labels that cover every class, shuffled."""
    labels = rng.permutation(np.arange(n) % len(CLASSES))
    return rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8), labels


def write_batch(path: Path, images: np.ndarray, labels: np.ndarray, style: str) -> None:
    """One batch file as a given writer would write it."""
    if style in ("python2", "python3"):
        write_batch_file(path, images, labels, python2=style == "python2")
        return
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    batch = {
        b"batch_label": path.name.encode(),
        b"labels": [int(label) for label in labels],
        b"data": rows,
        b"filenames": [f"{i}.png".encode() for i in range(len(images))],
    }
    if style == "labels-array":  # labels pickled as an ndarray, not a list
        batch[b"labels"] = np.asarray(labels, dtype=np.int64)
    if style == "fortran":  # column-major rows: numpy pickles them so
        batch[b"data"] = np.asfortranarray(rows)
    protocol = 4 if style == "protocol4" else 2  # 4: framed, long bytes outside the frames
    with path.open("wb") as f:
        pickle.dump(batch, f, protocol=protocol)


def write_batches(folder: Path, style: str, seed: int = 0) -> list[Path]:
    """cifar-10-batches-py/ with TRAIN_SIZES and TEST_SIZE images; returns its files."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    files = []
    sizes = [(f"data_batch_{i + 1}", n) for i, n in enumerate(TRAIN_SIZES)]
    for name, n in [*sizes, ("test_batch", TEST_SIZE)]:
        write_batch(folder / name, *random_split(rng, n), style)
        files.append(folder / name)
    return files


def reference_batches(files: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    """A plain unpickle of each file (trusted test data), concatenated, then sorted by class,
    stably: the canonical order."""
    images, labels = [], []
    for file in files:
        with file.open("rb") as f:
            batch = pickle.load(f, encoding="bytes")
        images.append(np.asarray(batch[b"data"]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
    all_images, all_labels = np.concatenate(images), np.concatenate(labels)
    order = np.argsort(all_labels, kind="stable")
    return torch.from_numpy(all_images[order]), torch.from_numpy(all_labels[order])


def pack(archive: Path, members: list[tuple[str, bytes | None]]) -> Path:
    """A tar (.tar or .tar.gz by its name) of (name, payload) in the given order; None: a folder."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz" if archive.name.endswith(".gz") else "w") as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            if payload is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return archive


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def image_files(seed: int = 0) -> list[tuple[str, bytes]]:
    """(train|test/<class>/<name>.png, PNG bytes), names in no particular order."""
    rng = np.random.default_rng(seed)
    files = []
    for split, n in (("train", 70), ("test", 30)):
        images, labels = random_split(rng, n)
        names = rng.permutation(n)  # file names unrelated to the order written
        for image, label, name in zip(images, labels, names, strict=True):
            files.append((f"{split}/{CLASSES[label]}/img{name:03d}.png", png(image)))
    return files


def reference_images(files: list[tuple[str, bytes]], split: str) -> tuple[torch.Tensor, ...]:
    """Each image decoded by PIL, sorted by class, then by file name: the canonical order."""
    keyed = []
    for rel, payload in files:
        part, cls, name = rel.split("/")
        if part == split:
            keyed.append(((CLASSES.index(cls), name), payload))
    keyed.sort(key=lambda item: item[0])
    images = [np.asarray(Image.open(io.BytesIO(p)).convert("RGB")) for _, p in keyed]
    labels = [label for (label, _), _ in keyed]
    return torch.from_numpy(np.stack(images)), torch.tensor(labels, dtype=torch.int64)


def assert_same(data, expected_train: tuple, expected_test: tuple) -> None:
    for got, want in zip(
        (data.train_images, data.train_labels, data.test_images, data.test_labels),
        (*expected_train, *expected_test),
        strict=True,
    ):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert torch.equal(got, want)


# ---------------------------------------------------------------------------------------------
# Bit for bit
# ---------------------------------------------------------------------------------------------

STYLES = ["python2", "python3", "protocol4", "labels-array", "fortran"]


@pytest.fixture(params=["strings-left-in-file", "strings-read"])
def skip_bytes(request, monkeypatch) -> None:
    """Long strings (the pixels) are left in the file and streamed; short ones are read at
    once. A small threshold sends even these small files' pixels and labels down the first path."""
    if request.param == "strings-left-in-file":
        monkeypatch.setattr(batch_files, "_SKIP_BYTES", 256)
    else:
        monkeypatch.setattr(batch_files, "_SKIP_BYTES", 1 << 40)


@pytest.mark.parametrize("style", STYLES)
def test_batch_folder_decodes_as_a_plain_unpickle(tmp_path: Path, style: str, skip_bytes) -> None:
    files = write_batches(tmp_path / "cifar-10-batches-py", style)
    data = read_source(find_source(tmp_path))
    assert_same(data, reference_batches(files[:5]), reference_batches(files[5:]))


@pytest.mark.parametrize("style", STYLES)
def test_batch_archive_in_any_member_order_decodes_as_a_plain_unpickle(
    tmp_path: Path, style: str, skip_bytes
) -> None:
    files = write_batches(tmp_path / "staging" / "cifar-10-batches-py", style)
    order = [files[i] for i in (3, 5, 2, 0, 4, 1)]  # scrambled, as in the official archive
    members = [("cifar-10-batches-py", None)]
    members += [(f"cifar-10-batches-py/{f.name}", f.read_bytes()) for f in order]
    members.insert(3, ("cifar-10-batches-py/readme.html", b"<html></html>"))
    pack(tmp_path / "data" / "cifar-10-python.tar.gz", members)
    data = read_source(find_source(tmp_path / "data"))
    assert_same(data, reference_batches(files[:5]), reference_batches(files[5:]))


def test_image_folder_decodes_as_sorted_files(tmp_path: Path) -> None:
    files = image_files()
    for rel, payload in files:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(payload)
    data = read_source(find_source(tmp_path))
    assert_same(data, reference_images(files, "train"), reference_images(files, "test"))


@pytest.mark.parametrize("name", ["cifar10.tar", "cifar10.tar.gz"])
@pytest.mark.parametrize("order", ["sorted", "shuffled", "test-first"])
def test_image_archive_in_any_member_order_decodes_as_sorted_files(
    tmp_path: Path, name: str, order: str
) -> None:
    files = image_files()
    members: list[tuple[str, bytes | None]] = [(f"c/{rel}", payload) for rel, payload in files]
    if order == "sorted":
        members.sort()
    elif order == "shuffled":  # as `tar cf` packs a folder: in the file system's own order
        random.Random(0).shuffle(members)
    else:
        members.sort(key=lambda member: (not member[0].startswith("c/test/"), member[0]))
    members.insert(0, ("c/train", None))
    members.insert(5, ("c/train/cat/.DS_Store", b"x"))  # hidden: left out
    data = read_source(find_source(pack(tmp_path / "data" / name, members).parent))
    assert_same(data, reference_images(files, "train"), reference_images(files, "test"))


def test_every_format_of_the_same_images_gives_the_same_tensors(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    train, test = random_split(rng, 120), random_split(rng, 40)
    folder = tmp_path / "batches" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    write_batch_file(folder / "test_batch", *test)
    for i, part in enumerate(np.array_split(np.arange(120), 5)):
        write_batch_file(folder / f"data_batch_{i + 1}", train[0][part], train[1][part])
    # the same images as files, named in the batches' order: by class, then name, is canonical
    files = [
        (f"{split}/{CLASSES[label]}/{i:05d}.png", png(image))
        for split, (images, labels) in (("train", train), ("test", test))
        for i, (image, label) in enumerate(zip(images, labels, strict=True))
    ]
    random.Random(1).shuffle(files)
    pack(tmp_path / "tar" / "images.tar", files)
    results = [read_source(find_source(tmp_path / kind)) for kind in ("batches", "tar")]
    for got in results[1:]:
        for key, value in results[0].as_dict().items():
            assert torch.equal(got.as_dict()[key], value), key


# ---------------------------------------------------------------------------------------------
# Memory: the pixels are streamed, and decoding holds one copy of the images
# ---------------------------------------------------------------------------------------------


class CountingReader(io.RawIOBase):
    """A file that counts the bytes read from it."""

    def __init__(self, path: Path) -> None:
        self.file, self.read_bytes = path.open("rb"), 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self.file.readinto(buffer)
        self.read_bytes += n
        return n

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.file.seek(offset, whence)

    def tell(self) -> int:
        return self.file.tell()


@pytest.mark.parametrize("python2", [True, False])
def test_a_batch_file_is_scanned_without_its_pixels_then_streamed(
    tmp_path: Path, python2: bool
) -> None:
    images, labels = random_split(np.random.default_rng(0), 400)  # 1.2 MB of pixels
    path = tmp_path / "data_batch_1"
    write_batch_file(path, images, labels, python2=python2)
    raw = CountingReader(path)
    scanned = batch_files.scan(raw, "data_batch_1", len(CLASSES))
    assert scanned.rows == 400 and np.array_equal(scanned.labels, labels)
    assert raw.read_bytes < path.stat().st_size / 20  # the labels and names, not the pixels

    out = np.zeros((401, 32, 32, 3), dtype=np.uint8)
    rows = np.random.default_rng(1).permutation(401)[:400]  # any row each image must go to
    batch_files.copy_rows(raw, scanned, out, rows)
    assert np.array_equal(out[rows], images)
    assert raw.read_bytes < 1.1 * path.stat().st_size  # each byte about once


def peak_growth_mb(read: Callable[[], object]) -> float:
    """How far this process's peak resident memory rises above its present size during `read`
    (Linux: the peak is reset through /proc/self/clear_refs)."""

    def status(key: str) -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
        raise AssertionError(key)

    gc.collect()
    release_freed_memory()  # free heap pages left resident would be reused, hiding growth
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = status("VmRSS")
    result = read()
    growth = status("VmHWM") - before
    del result
    return growth


@pytest.mark.skipif(
    not os.access("/proc/self/clear_refs", os.W_OK),
    reason="needs Linux's /proc/self/clear_refs to reset the peak resident memory",
)
@pytest.mark.parametrize("kind", ["batches-dir", "batches-tar", "image-tar-shuffled"])
def test_decoding_holds_one_copy_of_the_images(tmp_path: Path, kind: str) -> None:
    """Before, the batch readers held per-class copies and then a whole second copy, and a
    shuffled image archive was reordered into a second copy; now each image is decoded straight
    into its final row. The allowance over one copy covers labels, one file's bytes at a time
    and the allocator's slack, not a second copy (the old readers peaked at 1.6 to 2.4 times it)."""
    rng = np.random.default_rng(0)

    def make(root: Path, sizes: tuple[int, int]) -> Path:
        train, test = random_split(rng, sizes[0]), random_split(rng, sizes[1])
        if kind == "image-tar-shuffled":
            files = [
                (f"{split}/{CLASSES[label]}/{rng.integers(1 << 30):010d}.png", png(image))
                for split, (images, labels) in (("train", train), ("test", test))
                for image, label in zip(images, labels, strict=True)
            ]
            return pack(root / "images.tar", files).parent
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for i, part in enumerate(np.array_split(np.arange(sizes[0]), 5)):
            write_batch_file(folder / f"data_batch_{i + 1}", train[0][part], train[1][part])
        write_batch_file(folder / "test_batch", *test)
        if kind == "batches-tar":
            with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
                tar.add(folder, arcname="cifar-10-batches-py")
        return root if kind == "batches-dir" else root / "cifar-10-python.tar.gz"

    read_source(find_source(make(tmp_path / "warm", (50, 20))))  # code and caches loaded once
    sizes = (3000, 1000) if kind == "image-tar-shuffled" else (8000, 2000)
    source = find_source(make(tmp_path / "big", sizes))
    copy_mb = sum(sizes) * 32 * 32 * 3 / 2**20
    growth = peak_growth_mb(lambda: read_source(source))
    assert growth < 1.15 * copy_mb + 2, (growth, copy_mb)


# ---------------------------------------------------------------------------------------------
# Refusals: a damaged file is named, the file system's own errors stay its own
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("python2", [True, False])
@pytest.mark.parametrize("cut", ["in-the-header", "in-the-pixels", "after-the-pixels"])
def test_a_truncated_batch_file_is_named(tmp_path: Path, python2: bool, cut: str) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4"):
        write_batch_file(folder / name, *random_split(rng, 30), python2=python2)
    for name in ("data_batch_5", "test_batch"):
        write_batch_file(folder / name, *random_split(rng, 30), python2=python2)
    target = folder / "data_batch_2"
    data = target.read_bytes()
    at = {"in-the-header": 500, "in-the-pixels": len(data) // 2, "after-the-pixels": -200}[cut]
    target.write_bytes(data[:at])
    with pytest.raises(UserError, match=r"data_batch_2 is truncated or corrupt; delete it"):
        read_source(find_source(tmp_path))


def _python3_batch_with(tmp_path: Path, damage: Callable[[bytes], bytes]) -> Path:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        write_batch_file(folder / name, *random_split(rng, 30), python2=False)
    (folder / "data_batch_3").write_bytes(damage((folder / "data_batch_3").read_bytes()))
    return tmp_path


@pytest.mark.parametrize(
    "damage",
    [
        # a byte that is not UTF-8 in the middle of the pixels' text
        lambda data: data[: len(data) // 2] + b"\xff" + data[len(data) // 2 + 1 :],
        # a character beyond latin-1 (U+0100, two UTF-8 bytes for one)
        lambda data: data[: len(data) // 2] + "\u0100".encode() + data[len(data) // 2 + 2 :],
    ],
    ids=["not-utf8", "not-latin1"],
)
def test_a_python3_batch_file_with_bad_pixel_text_is_named(tmp_path: Path, damage) -> None:
    root = _python3_batch_with(tmp_path, damage)
    with pytest.raises(UserError, match=r"data_batch_3 is truncated or corrupt"):
        read_source(find_source(root))


@pytest.mark.parametrize(
    "batch",
    [
        {b"data": np.zeros((4, 3072), dtype=np.int16), b"labels": [0, 1, 2, 3]},  # not uint8
        {b"data": np.zeros((4, 3000), dtype=np.uint8), b"labels": [0, 1, 2, 3]},  # not 32x32x3
        {b"data": np.zeros((4, 3072), dtype=np.uint8), b"labels": [0, 1, 2]},  # labels short
        {b"data": np.zeros((4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 10]},  # no class 10
        {b"data": np.zeros((4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, -1]},
        {b"data": np.zeros((4, 3072), dtype=np.uint8)},  # no labels
        {b"data": [[0] * 3072] * 4, b"labels": [0, 1, 2, 3]},  # not an array
        [1, 2, 3],  # not a dict
    ],
    ids=["int16", "wrong-width", "few-labels", "label-10", "label-negative", "no-labels",
         "list", "not-a-dict"],
)  # fmt: skip
def test_a_batch_file_of_the_wrong_content_is_named(tmp_path: Path, batch) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        write_batch_file(folder / name, *random_split(rng, 20))
    with (folder / "data_batch_4").open("wb") as f:
        pickle.dump(batch, f, protocol=2)
    with pytest.raises(UserError, match=r"data_batch_4 is truncated or corrupt"):
        read_source(find_source(tmp_path))


def test_a_batch_file_that_would_run_code_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        write_batch_file(folder / name, *random_split(rng, 20))
    marker = tmp_path / "pwned"
    # os.system inside the pixels' place, written by hand as a Python 2 pickle would be
    payload = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    (folder / "data_batch_1").write_bytes(b"\x80\x02}(U\x04data" + payload[:-1] + b"u.")
    with pytest.raises(UserError, match=r"data_batch_1 is truncated or corrupt"):
        read_source(find_source(tmp_path))
    assert not marker.exists()


def test_an_archive_cut_in_the_pixels_is_named_as_the_archive(tmp_path: Path) -> None:
    files = write_batches(tmp_path / "staging" / "cifar-10-batches-py", "python2")
    members = [(f"cifar-10-batches-py/{f.name}", f.read_bytes()) for f in files]
    archive = pack(tmp_path / "data" / "cifar-10-python.tar", members)  # uncompressed: a clean cut
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size * 2 // 3])
    with pytest.raises(UserError, match=r"The archive .*cifar-10-python.tar is truncated or corr"):
        read_source(find_source(archive))


def test_a_missing_batch_is_named_before_a_corrupt_one(tmp_path: Path) -> None:
    files = write_batches(tmp_path / "staging" / "cifar-10-batches-py", "python2")
    members = [(f"cifar-10-batches-py/{f.name}", f.read_bytes()) for f in files]
    members = [(n, b"garbage" if n.endswith("data_batch_1") else p) for n, p in members]
    members = [(n, p) for n, p in members if not n.endswith("test_batch")]
    pack(tmp_path / "data" / "cifar-10-python.tar.gz", members)
    with pytest.raises(UserError, match=r"lacks test_batch; delete it and download it again"):
        read_source(find_source(tmp_path / "data"))
    members = [(n, p) for n, p in members if not n.endswith("data_batch_5")]  # still corrupt 1
    pack(tmp_path / "data" / "cifar-10-python.tar.gz", members)
    with pytest.raises(UserError, match=r"lacks data_batch_5, test_batch"):
        read_source(find_source(tmp_path / "data"))


def test_a_disk_error_is_not_called_a_corrupt_batch_file(tmp_path: Path, monkeypatch) -> None:
    files = write_batches(tmp_path / "cifar-10-batches-py", "python2")

    class FailingFile(io.BufferedReader):
        def read(self, size: int = -1) -> bytes:
            raise OSError(5, "Input/output error")

    real_open = Path.open

    def failing_open(self: Path, mode: str = "r", *args, **kwargs):
        if self == files[2]:
            return FailingFile(io.FileIO(os.fspath(self), "rb"))
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", failing_open)
    with pytest.raises(OSError, match="Input/output error"):
        read_source(find_source(tmp_path))


@pytest.mark.parametrize("change", ["removed", "added"])
def test_a_folder_that_changes_between_the_passes_is_refused(
    tmp_path: Path, change: str, monkeypatch
) -> None:
    """The buffer is sized by the first pass; a second pass that finds other files must not
    leave rows undecoded (whatever memory held) or write past the end."""
    files = image_files()
    for rel, payload in files:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(payload)
    real_names = formats._image_names

    def names(class_dir: Path) -> list[str]:
        found = real_names(class_dir)
        if class_dir.name != "cat" or class_dir.parent.name != "train":
            return found
        if change == "removed":
            return found[1:]
        (class_dir / "zzz.png").write_bytes(files[0][1])  # appears after the first pass
        return real_names(class_dir)

    monkeypatch.setattr(formats, "_image_names", names)
    with pytest.raises(UserError, match="changed while it was being read"):
        read_source(find_source(tmp_path))


# ---------------------------------------------------------------------------------------------
# The generated bench data is written as the real files are
# ---------------------------------------------------------------------------------------------


def test_generated_batch_files_carry_their_pixels_as_python2_strings(tmp_path: Path) -> None:
    images, labels = random_split(np.random.default_rng(0), 12)
    write_batch_file(tmp_path / "python2", images, labels)
    write_batch_file(tmp_path / "python3", images, labels, python2=False)

    def opcodes(path: Path) -> set[str]:
        return {op.name for op, _, _ in pickletools.genops(path.read_bytes())}

    python2, python3 = opcodes(tmp_path / "python2"), opcodes(tmp_path / "python3")
    assert "BINSTRING" in python2 and "BINUNICODE" not in python2  # raw strings, as cPickle
    assert "BINUNICODE" in python3  # the latin-1 text of `_codecs.encode`
    assert (tmp_path / "python3").stat().st_size > 1.3 * (tmp_path / "python2").stat().st_size
    for name in ("python2", "python3"):  # both decode to the same arrays
        with (tmp_path / name).open("rb") as f:
            batch = pickle.load(f, encoding="bytes")
        assert batch[b"labels"] == labels.tolist()
        rows = np.asarray(batch[b"data"]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        assert np.array_equal(rows, images)
