"""Find CIFAR-10 on disk in any supported format and decode it to uint8 tensors.

Supported formats, detected from what `root` holds (the user never says which):

1. the official `cifar-10-python.tar.gz`, or its extracted `cifar-10-batches-py/`;
2. an image-folder tree `train/<class>/*.{png,jpg}` and `test/<class>/*.{png,jpg}`,
   in the official class order, or the same tree packed as a `.tar.gz` / `.tgz`.

In an image-folder tree every file that is not hidden (name starting with '.') must be an
image directly inside `train/<class>/` or `test/<class>/`: a stray file, an image directly in
`train/`, an image nested deeper (`train/cat/more/x.jpg`) or a broken symbolic link is refused
with one sentence naming it, never silently skipped. A folder that holds images but no copy in
a supported layout (only `train/`, the `train/` split itself, loose images) is refused too, so
that nothing is ever downloaded into, or used instead of, a user's own images.

Every reader returns the images in one canonical order: by class, then in the order
of the source (batch order, or sorted file names), so every format of the same images
yields the same tensors.

Every reader decodes each image straight into its canonical row of one preallocated buffer
per split, so decoding holds one copy of the images (176 MB for CIFAR-10) and little else: the
batch files' pixels are streamed from the pickle (cvexp/data/batch_files.py), archives are read
member by member without keeping their index, and whatever is needed to place an image (its
class, its file name) is kept in arrays, not in tens of thousands of Python objects.
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import os
import re
import sys
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from cvexp.data import batch_files
from cvexp.data.image_files import IMAGE_SUFFIXES as ANY_IMAGE_SUFFIXES
from cvexp.errors import UserError

CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
IMAGE_SIZE = 32
_LIBC = None  # glibc, for malloc_trim: bounds the peak memory of decoding (see _assemble)
if sys.platform.startswith("linux"):
    try:
        _LIBC = ctypes.CDLL("libc.so.6")
        _LIBC.malloc_trim  # noqa: B018  (musl and others lack it)
    except (OSError, AttributeError):
        _LIBC = None
OFFICIAL_ARCHIVE = "cifar-10-python.tar.gz"
OFFICIAL_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLITS = ("train", "test")


@dataclass(frozen=True)
class Cifar10Tensors:
    """The decoded dataset: images (N, 32, 32, 3) uint8 and labels (N,) int64 per split."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor

    def as_dict(self) -> dict[str, torch.Tensor]:
        """The four tensors by name, for saving to the cache."""
        return {
            "train_images": self.train_images,
            "train_labels": self.train_labels,
            "test_images": self.test_images,
            "test_labels": self.test_labels,
        }


@dataclass(frozen=True)
class Source:
    """A located copy of CIFAR-10: its format and the path that holds it."""

    kind: str  # "batches-dir" | "batches-tar" | "image-dir" | "image-tar"
    path: Path

    def fingerprint(self) -> str:
        """A hash of the names, sizes and modification times of the files behind this source.

        Hidden files and folders are skipped: the decoded-data cache lives under root.
        """
        digest = hashlib.sha1(self.kind.encode())
        if self.path.is_file():
            stat = self.path.stat()
            digest.update(f"{self.path.name}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
            return digest.hexdigest()[:16]
        for folder, dirs, files in os.walk(self.path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(f for f in files if not f.startswith(".")):
                stat = os.stat(os.path.join(folder, name))
                rel = os.path.relpath(os.path.join(folder, name), self.path)
                digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------------------------


def find_source(root: Path) -> Source | None:
    """Return the CIFAR-10 copy under `root`, or None when there is none.

    None means `root` holds no images at all (or does not exist), so a caller may download
    into it; a folder with images in no supported layout raises a UserError that names the
    problem (see `_refuse_images_out_of_layout`).
    """
    if root.is_file():
        if _is_tar(root):
            return Source(_tar_kind(root), root)
        return None
    if not root.is_dir():
        return None
    if all((root / name).is_file() for name in (*TRAIN_BATCHES, TEST_BATCH)):
        return Source("batches-dir", root)
    if (root / OFFICIAL_DIR).is_dir():
        return Source("batches-dir", root / OFFICIAL_DIR)
    if (root / OFFICIAL_ARCHIVE).is_file():
        return Source("batches-tar", root / OFFICIAL_ARCHIVE)
    if (root / "train").is_dir() and (root / "test").is_dir():
        return Source("image-dir", root)
    archives = sorted(p for p in root.iterdir() if p.is_file() and _is_tar(p))
    if len(archives) > 1:
        names = ", ".join(p.name for p in archives)
        raise UserError(
            f"{root} holds several archives ({names}); keep one CIFAR-10 archive there "
            "or point data.root at the one to use."
        )
    if archives:
        return Source(_tar_kind(archives[0]), archives[0])
    _refuse_images_out_of_layout(root)
    return None


def _refuse_images_out_of_layout(root: Path) -> None:
    """Raise a UserError naming the problem when `root`, a folder without a CIFAR-10 copy,
    holds an image-folder tree in the wrong layout or any images at all."""
    for have, lack in (("train", "test"), ("test", "train")):
        if (root / have).is_dir() and not (root / lack).is_dir():
            raise UserError(
                f"{root} has {have}/ but no {lack}/; add {lack}/<class>/ images beside {have}/ "
                "(the image-folder layout needs both splits), or point data.root at a folder "
                "that holds a complete CIFAR-10 copy."
            )
    if any(p.is_dir() and p.name in CLASSES for p in root.iterdir()):
        if root.name in SPLITS:
            raise UserError(
                f"{root} looks like the {root.name}/ split itself (its folders are class names); "
                "pass its parent folder as data.root."
            )
        raise UserError(
            f"{root} looks like a single split (its folders are class names); make it train/ "
            "or test/ in a folder that holds both splits, and pass that folder as data.root."
        )
    image = _first_file(root, ANY_IMAGE_SUFFIXES)
    if image is not None:
        raise UserError(
            f"{root} holds images (e.g. {image.relative_to(root)}) that are not in the "
            "train/<class>/ and test/<class>/ layout; arrange them so, or point data.root at a "
            "folder that holds CIFAR-10 (or at an empty one, to download it there)."
        )


def _first_file(folder: Path, suffixes: Iterable[str] | None = None) -> Path | None:
    """The first file under `folder` (recursively, sorted, hidden names left out), optionally
    only one whose suffix is in `suffixes`; None when there is none."""
    for parent, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(f for f in files if not f.startswith(".")):
            if suffixes is None or Path(name).suffix.lower() in suffixes:
                return Path(parent) / name
    return None


def _is_tar(path: Path) -> bool:
    return path.name.endswith((".tar.gz", ".tgz", ".tar"))


def _tar_kind(path: Path) -> str:
    """Tell an official batches archive from a packed image-folder tree by its member names."""
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                parts = Path(member.name).parts
                if OFFICIAL_DIR in parts or member.name.endswith(TRAIN_BATCHES):
                    return "batches-tar"
                if _image_member_key(member.name) is not None:
                    return "image-tar"
    except (tarfile.TarError, OSError, EOFError) as err:
        raise UserError(
            f"{path} is not a readable archive ({err}); delete it and download or copy it again."
        ) from None
    raise UserError(
        f"{path} holds neither cifar-10-batches-py/ nor train/<class>/ and test/<class>/ "
        "image folders; point data.root at a CIFAR-10 copy in one of those layouts."
    )


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def read_source(source: Source) -> Cifar10Tensors:
    """Decode a located copy into uint8 tensors, in canonical order."""
    readers = {
        "batches-dir": _read_batches_dir,
        "batches-tar": _read_batches_tar,
        "image-dir": _read_image_dir,
        "image-tar": _read_image_tar,
    }
    return readers[source.kind](source.path)


def _release_freed_memory() -> None:
    """Give freed heap pages back to the OS (glibc keeps them otherwise); a no-op elsewhere."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


class _BatchSplit:
    """One split's scanned batch files and the buffer their pixels are copied into, each image
    straight into its canonical row (by class, then source order), so that nothing is
    reordered afterwards and no second copy is ever held."""

    def __init__(self, batches: list[batch_files.BatchScan]) -> None:
        self.batches = batches
        labels = np.concatenate([batch.labels for batch in batches])
        order = np.argsort(labels, kind="stable")
        self.rows = np.empty_like(order)  # each image's canonical row, in source order
        self.rows[order] = np.arange(len(order))
        self.starts = np.cumsum([0] + [batch.rows for batch in batches]).tolist()
        self.labels = labels[order]
        _release_freed_memory()  # what scanning left on the heap would add to the peak
        self.images = torch.empty((len(labels), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=torch.uint8)

    def copy(self, i: int, file: BinaryIO) -> None:
        """Copy the pixels of the i-th batch file, open in `file`, into their rows."""
        rows = self.rows[self.starts[i] : self.starts[i + 1]]
        batch_files.copy_rows(file, self.batches[i], self.images.numpy(), rows)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        _release_freed_memory()
        return self.images, torch.from_numpy(self.labels)


def _read_batches_dir(path: Path) -> Cifar10Tensors:
    def scan(name: str) -> batch_files.BatchScan:
        file = path / name
        if not file.is_file():
            raise UserError(
                f"{path} lacks the batch file {name}; download CIFAR-10 again "
                "(data.download=true) or copy the complete cifar-10-batches-py/ folder."
            )
        with file.open("rb") as stream:
            return batch_files.scan(stream, str(file), len(CLASSES))

    tensors: list[torch.Tensor] = []
    for names in (TRAIN_BATCHES, (TEST_BATCH,)):
        split = _BatchSplit([scan(name) for name in names])
        for i, name in enumerate(names):
            with (path / name).open("rb") as file:
                split.copy(i, file)
        tensors.extend(split.tensors())
    return Cifar10Tensors(*tensors)


def _read_batches_tar(path: Path) -> Cifar10Tensors:
    """Two passes over the archive: the first finds and scans the batch files (labels, where
    the pixels are), the second copies the pixels, in archive order, so that a compressed
    archive is decompressed twice and never rewound more."""
    wanted = (*TRAIN_BATCHES, TEST_BATCH)
    found: dict[str, tarfile.TarInfo] = {}
    scans: dict[str, batch_files.BatchScan | UserError] = {}
    try:
        with tarfile.open(path) as tar:
            for member in _stream_members(tar):
                name = Path(member.name).name
                if member.isfile() and name in wanted:
                    found[name] = member
                    try:  # a corrupt file is named after the check for missing ones, as before
                        with tar.extractfile(member) as file:
                            scans[name] = batch_files.scan(file, f"{path}:{name}", len(CLASSES))
                    except UserError as error:
                        scans[name] = error
            missing = [name for name in wanted if name not in found]
            if missing:
                raise UserError(
                    f"The archive {path} lacks {', '.join(missing)}; delete it and download it "
                    "again (data.download=true)."
                )
            for name in wanted:
                if isinstance(scans[name], UserError):
                    raise scans[name]
            splits = [
                _BatchSplit([scans[name] for name in names])
                for names in (TRAIN_BATCHES, (TEST_BATCH,))
            ]
            place = {name: (splits[0], i) for i, name in enumerate(TRAIN_BATCHES)}
            place[TEST_BATCH] = (splits[1], 0)
            for name in sorted(wanted, key=lambda name: found[name].offset_data):
                split, i = place[name]
                with tar.extractfile(found[name]) as file:
                    split.copy(i, file)
    except (tarfile.TarError, OSError, EOFError) as err:
        raise UserError(
            f"The archive {path} is truncated or corrupt ({err}); delete it and download it "
            "again (data.download=true) or replace it with a good copy."
        ) from None
    return Cifar10Tensors(*splits[0].tensors(), *splits[1].tensors())


def _stream_members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """The archive's members in order, without keeping them: TarFile's own iteration keeps
    every TarInfo it reads in `tar.members` (60,000 of them hold tens of MB)."""
    while (member := tar.next()) is not None:
        tar.members.clear()
        yield member


def _decode_image_into(out: np.ndarray, data: bytes, name: str) -> None:
    """Decode one image file into `out`, a (32, 32, 3) uint8 view."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            array = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise UserError(
            f"{name} is not a readable image; remove it or replace it with a good copy."
        ) from None
    if array.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise UserError(
            f"{name} is {array.shape[1]}x{array.shape[0]} pixels; CIFAR-10 images must be "
            f"{IMAGE_SIZE}x{IMAGE_SIZE}, so resize it or remove it."
        )
    out[...] = array


class _ImageSplit:
    """One split's images, each decoded straight into its canonical row of a preallocated
    (N, 32, 32, 3) buffer. Holding 60,000 small arrays and stacking them, or reordering the
    buffer with an index, would cost two copies of the data; this costs one.

    `labels`: each image's class index, in source order (the order `add` is called in);
    `rows`: each image's canonical row, in source order (None when that order is canonical).
    """

    def __init__(self, labels: np.ndarray, rows: np.ndarray | None = None) -> None:
        self.images = torch.empty((len(labels), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=torch.uint8)
        self.source_labels, self.rows, self.count = labels, rows, 0

    def add(self, label: int, data: bytes, name: str) -> None:
        """Decode the next image of the source order (of class `label`; `name` for messages)."""
        i = self.count
        if i == len(self.source_labels) or self.source_labels[i] != label:
            raise UserError(
                f"The dataset changed while it was being read (at {name}); run again once it "
                "is complete."
            )
        row = i if self.rows is None else int(self.rows[i])
        _decode_image_into(self.images[row].numpy(), data, name)
        self.count += 1

    def tensors(self, split: str, origin: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) in canonical order: by class, then by file name."""
        counts = np.bincount(self.source_labels, minlength=len(CLASSES))
        missing = [c for c, n in zip(CLASSES, counts, strict=True) if n == 0]
        if missing:
            raise UserError(
                f"{origin} has no {split} images for class {', '.join(missing)}; the image-folder "
                f"layout needs {split}/<class>/ for all ten classes ({', '.join(CLASSES)})."
            )
        if self.count != len(self.source_labels):
            raise UserError(
                f"{origin} changed while it was being read; run again once it is complete."
            )
        labels = np.repeat(np.arange(len(CLASSES), dtype=np.int64), counts)
        return self.images, torch.from_numpy(labels)


class _ImageKeys:
    """(class index, file name) of each image of a split, in source order, whence each image's
    canonical row. Held in two numpy arrays, which grow as needed, rather than as 50,000 tuples
    of Python objects: those would leave the heap fragmented, megabytes that stay resident."""

    def __init__(self) -> None:
        self.labels = np.empty(1024, dtype=np.int64)
        self.names = np.empty(1024, dtype="U16")  # code points: sorted as Python sorts str
        self.count = 0

    def append(self, label: int, name: str) -> None:
        if self.count == len(self.labels):
            self.labels = np.concatenate([self.labels, np.empty_like(self.labels)])
            self.names = np.concatenate([self.names, np.empty_like(self.names)])
        width = self.names.dtype.itemsize // 4
        if len(name) > width:
            self.names = self.names.astype(f"U{max(len(name), 2 * width)}")
        self.labels[self.count], self.names[self.count] = label, name
        self.count += 1

    def split(self) -> _ImageSplit:
        """An `_ImageSplit` that decodes each image, in source order, into its canonical row."""
        labels = self.labels[: self.count].copy()
        order = np.lexsort((self.names[: self.count], labels))  # stable: by class, then name
        rows = np.empty_like(order)
        rows[order] = np.arange(len(order))
        return _ImageSplit(labels, rows)


def _check_class_dirs(split_dir: Path) -> None:
    """Refuse folders that are not class names, and files outside the class folders."""
    entries = sorted(p for p in split_dir.iterdir() if not p.name.startswith("."))
    unknown = [p.name for p in entries if p.is_dir() and p.name not in CLASSES]
    if unknown:
        raise UserError(
            f"{split_dir} has folders that are not CIFAR-10 classes ({', '.join(unknown)}); "
            f"the class folders must be named {', '.join(CLASSES)}."
        )
    for entry in entries:
        if not entry.is_dir():
            raise UserError(
                f"{entry} is not in a class folder; move it into {split_dir}/<class>/ or remove it."
            )


def _count_images(class_dir: Path) -> int:
    """The number of images directly in a class folder; hidden entries are left out, and
    anything else (a stray or nested file, a broken link) is refused, never skipped."""
    count = 0
    for file in sorted(class_dir.iterdir()):
        if file.name.startswith("."):
            continue
        if file.is_symlink() and not file.exists():
            raise UserError(
                f"{file} is a broken symbolic link (to {os.readlink(file)}); remove it or "
                "point it at an image that exists."
            )
        if file.is_dir():
            nested = _first_file(file)
            if nested is not None:
                raise UserError(
                    f"{nested} is in a folder inside the class folder {class_dir}; class folders "
                    f"are read one level deep, so move it up into {class_dir} or remove it."
                )
            continue  # an empty folder (or one of hidden files only): nothing is left unread
        if not file.is_file() or file.suffix.lower() not in IMAGE_SUFFIXES:
            raise UserError(
                f"{file} is not an image (.png or .jpg); remove it from the dataset folder."
            )
        count += 1
    return count


def _image_names(class_dir: Path) -> list[str]:
    """The file names of the images in a class folder that `_count_images` has checked, sorted:
    its entries that are neither hidden nor folders (names, not Paths: fewer objects)."""
    with os.scandir(class_dir) as entries:
        return sorted(e.name for e in entries if not e.name.startswith(".") and not e.is_dir())


def _read_image_dir(path: Path) -> Cifar10Tensors:
    """Per split, two passes over the class folders: the first checks them and counts the
    images, the second lists each folder again and decodes its images, in canonical order, so
    that no more than one folder's file names are held at a time."""
    tensors: list[torch.Tensor] = []
    for split in SPLITS:
        split_dir = path / split
        _check_class_dirs(split_dir)
        classes = [name for name in CLASSES if (split_dir / name).is_dir()]
        counts = [_count_images(split_dir / name) for name in classes]
        labels = np.repeat(np.array([CLASSES.index(n) for n in classes], dtype=np.int64), counts)
        decoded = _ImageSplit(labels)
        for name in classes:
            for filename in _image_names(split_dir / name):
                # a str, not a Path: joining Paths interns every part, and the interpreter's
                # table of interned strings grows by megabytes for 60,000 names, never to shrink
                file = os.path.join(split_dir, name, filename)
                with open(file, "rb") as stream:
                    decoded.add(CLASSES.index(name), stream.read(), file)
        tensors.extend(decoded.tensors(split, str(path)))
        del decoded
        _release_freed_memory()
    return Cifar10Tensors(*tensors)


_MEMBER = re.compile(r"^(?:.*/)?(train|test)/([^/]+)/([^/]+)$")


def _image_member_key(name: str) -> tuple[str, str, str] | None:
    """(split, class, file name) for an archive member inside train/<class>/ or test/<class>/."""
    match = _MEMBER.match(name.lstrip("./"))
    return match.groups() if match else None  # type: ignore[return-value]


def _stray_member_problem(name: str) -> str | None:
    """Why a file member that is not directly in train/<class>/ or test/<class>/ cannot be
    left out silently: it is directly in a split folder, or nested deeper in a class folder.
    None for a member outside the splits, or a hidden one."""
    parts = [part for part in name.split("/") if part not in ("", ".")]
    splits = [i for i, part in enumerate(parts) if part in SPLITS]
    if not splits:
        return None
    split, rest = parts[splits[0]], parts[splits[0] + 1 :]
    if any(part.startswith(".") for part in rest):
        return None
    if len(rest) == 1:
        return f"is not in a class folder; move it into {split}/<class>/"
    folder = f"{split}/{rest[0]}/"
    return (
        f"is in a folder inside {folder}; class folders are read one level deep, so move it "
        f"up into {folder}"
    )


def _read_image_tar(path: Path) -> Cifar10Tensors:
    """Two passes over the archive: the first checks every member and notes each image's class
    and file name, whence its canonical row; the second decodes the images, in archive order,
    each straight into its row. No member is kept between the passes (a compressed archive is
    decompressed twice instead), and no file name while decoding."""
    try:
        keys = {split: _ImageKeys() for split in SPLITS}
        with tarfile.open(path) as tar:
            for member in _stream_members(tar):
                key = _checked_image_member(path, member)
                if key is not None:
                    keys[key[0]].append(CLASSES.index(key[1]), key[2])
        decoded = {split: keys.pop(split).split() for split in SPLITS}
        _release_freed_memory()  # the keys' heap would add to the peak
        with tarfile.open(path) as tar:
            for member in _stream_members(tar):
                key = _checked_image_member(path, member)
                if key is not None:
                    with tar.extractfile(member) as file:
                        data = file.read()
                    label = CLASSES.index(key[1])
                    decoded[key[0]].add(label, data, f"{path}:{member.name}")
    except (tarfile.TarError, OSError, EOFError) as err:
        raise UserError(
            f"The archive {path} is truncated or corrupt ({err}); copy or download it again."
        ) from None
    tensors: list[torch.Tensor] = []
    for split in SPLITS:
        tensors.extend(decoded[split].tensors(split, str(path)))
    return Cifar10Tensors(*tensors)


def _checked_image_member(path: Path, member: tarfile.TarInfo) -> tuple[str, str, str] | None:
    """(split, class, file name) for an image member of a packed image-folder tree; None for a
    member that is left out (a folder, a hidden file, anything outside the splits). A file that
    cannot be left out silently (outside the class folders, in an unknown class, not an image)
    is refused with a UserError that names it."""
    key = _image_member_key(member.name)
    if key is None and member.isfile():
        problem = _stray_member_problem(member.name)
        if problem is not None:
            raise UserError(f"{path}:{member.name} {problem} or remove it from the archive.")
    if key is None or not member.isfile() or key[2].startswith("."):
        return None
    _, cls, filename = key
    label = f"{path}:{member.name}"
    if cls not in CLASSES:
        raise UserError(
            f"{label} is in a folder that is not a CIFAR-10 class; the class "
            f"folders must be named {', '.join(CLASSES)}."
        )
    if os.path.splitext(filename)[1].lower() not in IMAGE_SUFFIXES:  # not Path: see _read_image_dir
        raise UserError(f"{label} is not an image (.png or .jpg); remove it from the archive.")
    return key
