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
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import os
import pickle
import re
import sys
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

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


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles an official batch file, refusing every global except numpy's array rebuilders."""

    ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _decode_batch(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """One official batch file: (N, 32, 32, 3) uint8 images and (N,) labels."""
    hint = (
        f"the CIFAR-10 batch file {name} is truncated or corrupt; delete it and download "
        "it again (data.download=true) or replace it with a good copy."
    )
    try:
        batch = _BatchUnpickler(io.BytesIO(data), encoding="bytes").load()
        images = np.asarray(batch[b"data"])
        labels = np.asarray(batch.get(b"labels", batch.get(b"fine_labels")), dtype=np.int64)
    except Exception:
        raise UserError(hint[0].upper() + hint[1:]) from None
    if images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != 3 * IMAGE_SIZE**2:
        raise UserError(hint[0].upper() + hint[1:])
    if labels.shape != (images.shape[0],) or labels.min() < 0 or labels.max() >= len(CLASSES):
        raise UserError(hint[0].upper() + hint[1:])
    # stored channel-major: (N, 3, 32, 32) -> (N, 32, 32, 3)
    images = images.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE).transpose(0, 2, 3, 1)
    return images, labels


def _release_freed_memory() -> None:
    """Give freed heap pages back to the OS (glibc keeps them otherwise); a no-op elsewhere."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _assemble(parts_per_class: list[list[np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate per-class parts, each (n, 32, 32, 3), class 0 first, into one uint8 tensor.

    Parts are released as they are copied, so the peak is about one copy of the data, not
    the two that concatenating everything at once would hold.
    """
    sizes = [sum(len(p) for p in parts) for parts in parts_per_class]
    images = torch.empty((sum(sizes), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=torch.uint8)
    out, cursor = images.numpy(), 0
    for parts in parts_per_class:
        parts.reverse()
        while parts:
            part = parts.pop()
            out[cursor : cursor + len(part)] = part
            cursor += len(part)
        _release_freed_memory()  # the copied parts' pages go back as the output grows
    labels = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    return images, labels


def _stack_batches(batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, ...]:
    """Official batches in canonical order: by class, then source order."""
    parts_per_class: list[list[np.ndarray]] = [[] for _ in CLASSES]
    for images, labels in batches:  # each batch is split by class and released
        for label, parts in enumerate(parts_per_class):
            parts.append(images[labels == label])  # a contiguous copy
    return _assemble(parts_per_class)


def _read_batches_dir(path: Path) -> Cifar10Tensors:
    def load(name: str) -> tuple[np.ndarray, np.ndarray]:
        file = path / name
        if not file.is_file():
            raise UserError(
                f"{path} lacks the batch file {name}; download CIFAR-10 again "
                "(data.download=true) or copy the complete cifar-10-batches-py/ folder."
            )
        return _decode_batch(file.read_bytes(), str(file))

    train = _stack_batches(load(name) for name in TRAIN_BATCHES)
    test = _stack_batches([load(TEST_BATCH)])
    return Cifar10Tensors(*train, *test)


def _read_batches_tar(path: Path) -> Cifar10Tensors:
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                name = Path(member.name).name
                if member.isfile() and name in (*TRAIN_BATCHES, TEST_BATCH):
                    found[name] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise UserError(
            f"The archive {path} is truncated or corrupt ({err}); delete it and download it "
            "again (data.download=true) or replace it with a good copy."
        ) from None
    missing = [n for n in (*TRAIN_BATCHES, TEST_BATCH) if n not in found]
    if missing:
        raise UserError(
            f"The archive {path} lacks {', '.join(missing)}; delete it and download it again "
            "(data.download=true)."
        )
    train = _stack_batches(_decode_batch(found[n], f"{path}:{n}") for n in TRAIN_BATCHES)
    test = _stack_batches([_decode_batch(found[TEST_BATCH], f"{path}:{TEST_BATCH}")])
    return Cifar10Tensors(*train, *test)


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
    """One split's images, decoded straight into a preallocated (N, 32, 32, 3) buffer.

    Holding 60,000 small arrays and stacking them would cost two copies of the data
    (and the small arrays' heap is not given back); this costs one.
    """

    def __init__(self, count: int) -> None:
        self.images = torch.empty((count, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=torch.uint8)
        self.keys: list[tuple[int, str]] = []  # (class index, file name), in decoding order

    def add(self, class_name: str, filename: str, data: bytes, name: str) -> None:
        _decode_image_into(self.images[len(self.keys)].numpy(), data, name)
        self.keys.append((CLASSES.index(class_name), filename))

    def tensors(self, split: str, origin: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) in canonical order: by class, then by file name."""
        present = {label for label, _ in self.keys}
        missing = [c for i, c in enumerate(CLASSES) if i not in present]
        if missing:
            raise UserError(
                f"{origin} has no {split} images for class {', '.join(missing)}; the image-folder "
                f"layout needs {split}/<class>/ for all ten classes ({', '.join(CLASSES)})."
            )
        images = self.images[: len(self.keys)]
        order = sorted(range(len(self.keys)), key=self.keys.__getitem__)
        if order != list(range(len(order))):  # usually already sorted: no copy then
            images = images[torch.tensor(order)]
        labels = torch.tensor([self.keys[i][0] for i in order], dtype=torch.int64)
        return images, labels


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


def _image_files(class_dir: Path) -> Iterator[Path]:
    """The images directly in a class folder, sorted; hidden entries are left out, and
    anything else (a stray or nested file, a broken link) is refused, never skipped."""
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
        yield file


def _read_image_dir(path: Path) -> Cifar10Tensors:
    tensors: list[torch.Tensor] = []
    for split in SPLITS:
        split_dir = path / split
        _check_class_dirs(split_dir)
        files = [
            (name, file)
            for name in CLASSES
            if (class_dir := split_dir / name).is_dir()
            for file in _image_files(class_dir)
        ]
        decoded = _ImageSplit(len(files))
        for name, file in files:
            decoded.add(name, file.name, file.read_bytes(), str(file))
        tensors.extend(decoded.tensors(split, str(path)))
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
    try:
        with tarfile.open(path) as tar:
            images: list[tuple[str, str, str, tarfile.TarInfo]] = []  # split, class, file, member
            for member in tar.getmembers():  # one pass over the index, to size the buffers
                key = _image_member_key(member.name)
                if key is None and member.isfile():
                    problem = _stray_member_problem(member.name)
                    if problem is not None:
                        raise UserError(
                            f"{path}:{member.name} {problem} or remove it from the archive."
                        )
                if key is None or not member.isfile() or key[2].startswith("."):
                    continue
                split, cls, filename = key
                label = f"{path}:{member.name}"
                if cls not in CLASSES:
                    raise UserError(
                        f"{label} is in a folder that is not a CIFAR-10 class; the class "
                        f"folders must be named {', '.join(CLASSES)}."
                    )
                if Path(filename).suffix.lower() not in IMAGE_SUFFIXES:
                    raise UserError(
                        f"{label} is not an image (.png or .jpg); remove it from the archive."
                    )
                images.append((split, cls, filename, member))
            decoded = {s: _ImageSplit(sum(1 for m in images if m[0] == s)) for s in SPLITS}
            for split, cls, filename, member in images:
                data = tar.extractfile(member).read()
                decoded[split].add(cls, filename, data, f"{path}:{member.name}")
    except (tarfile.TarError, OSError, EOFError) as err:
        raise UserError(
            f"The archive {path} is truncated or corrupt ({err}); copy or download it again."
        ) from None
    tensors: list[torch.Tensor] = []
    for split in SPLITS:
        tensors.extend(decoded[split].tensors(split, str(path)))
    return Cifar10Tensors(*tensors)
