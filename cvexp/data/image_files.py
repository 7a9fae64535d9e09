"""Image files on disk as model input: find them in a folder tree, read one as (3, 32, 32) in [0, 1].

Reading is careful about what real folders hold: any format Pillow decodes (PNG, JPEG, BMP,
WebP, GIF, TIFF, ...), any size, palette, grayscale and alpha images, 16-bit PNGs (scaled by
their own range, not clipped at 255), and camera photos whose EXIF says they are rotated. A
file that cannot be decoded raises `UnreadableImage`, whose message says why, so a caller can
skip it with a note instead of stopping.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from cvexp.errors import UserError

IMAGE_SIZE = 32
# suffixes searched for in folders (a file named explicitly is read whatever its suffix)
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".dib", ".webp", ".gif", ".tif", ".tiff"}
    | {".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico", ".jp2", ".avif", ".heic", ".heif"}
)
# transparent pixels are shown over white, as a browser or a document would show them
BACKGROUND = (255, 255, 255)
EXIF_ORIENTATION = 0x0112


class UnreadableImage(UserError):
    """A file that is not an image Pillow can decode (corrupt, truncated, too large, another format)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path} is not a readable image ({reason}).")
        self.path, self.reason = path, reason


def find_images(path: str | Path) -> list[Path]:
    """The image files under a folder (recursively, by suffix, in sorted order), or the one file given.

    Hidden files and folders (names starting with '.') are left out; broken symbolic links are
    kept, so that reading them reports them as unreadable. Raises UserError for a path that
    does not exist.
    """
    root = Path(path).expanduser()
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise UserError(
            f"Input not found: {root}; pass inputs=<an image file or a folder of images>."
        )
    found = [
        p
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and (p.is_file() or _broken_link(p))  # a broken link is found, then skipped with why
    ]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def read_image(path: str | Path, size: int | None = IMAGE_SIZE) -> torch.Tensor:
    """One image file as float (3, size, size) in [0, 1]; `size=None` keeps its own size.

    Raises UnreadableImage (a UserError) when the file cannot be decoded.
    """
    return read_image_with_size(path, size)[0]


def read_image_with_size(
    path: str | Path, size: int | None = IMAGE_SIZE
) -> tuple[torch.Tensor, tuple[int, int]]:
    """`read_image`, plus the image's own (width, height) after EXIF orientation, before resizing."""
    file = Path(path).expanduser()
    try:
        with warnings.catch_warnings():
            # a very large image is refused below (DecompressionBombError); a large one just loads
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(file) as img:
                original = _upright_size(img)
                if size is not None and img.format == "JPEG":
                    img.draft(None, (size, size))  # decode big JPEGs at a reduced scale: fast
                img.load()
                return _to_tensor(img, size), original
    except UnreadableImage:
        raise
    except Image.DecompressionBombError as err:
        raise UnreadableImage(
            file, f"{_first_line(err)}; Pillow refuses images this large as a safety measure"
        ) from None
    except FileNotFoundError:
        if _broken_link(file):
            reason = f"a broken symbolic link: {os.readlink(file)} does not exist"
            raise UnreadableImage(file, reason) from None
        raise UnreadableImage(file, "no such file") from None
    except Exception as err:  # a corrupt file makes Pillow's decoders fail in many ways
        raise UnreadableImage(file, _first_line(err)) from None


def _broken_link(path: Path) -> bool:
    """Whether `path` is a symbolic link whose target does not exist."""
    return path.is_symlink() and not path.exists()


def _upright_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) as shown, once EXIF orientation is applied (5 to 8 swap the sides)."""
    width, height = img.size
    try:
        orientation = img.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # a malformed EXIF block: the pixels are still fine
        orientation = 1
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _to_tensor(img: Image.Image, size: int | None) -> torch.Tensor:
    """A loaded image -> float (3, H, W) in [0, 1], upright, resized to size x size if given."""
    try:
        upright = ImageOps.exif_transpose(img)
    except Exception:  # a malformed EXIF block: the pixels are still fine
        upright = img
    if upright.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        gray = upright.convert("F")  # high bit depth: scale by its own range, never clip at 255
        scale = _full_scale(upright.mode, gray.getextrema()[1])
        if size is not None and gray.size != (size, size):
            gray = gray.resize((size, size), Image.BICUBIC)
        array = np.asarray(gray, dtype=np.float32) / scale
        return torch.from_numpy(array.copy()).clamp(0, 1)[None].expand(3, -1, -1).contiguous()
    rgb = _flatten_alpha(upright)
    if size is not None and rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.BICUBIC, reducing_gap=3.0)
    array = np.asarray(rgb, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255


def _full_scale(mode: str, maximum: float) -> float:
    """The value that means white in a high-bit-depth grayscale image."""
    if mode.startswith("I;16"):
        return 65535.0
    if mode == "I":  # 16-bit PNGs decode as "I" in some Pillow versions
        return 65535.0 if maximum <= 65535 else float(2**31 - 1)
    # "F": floats are taken as [0, 1], or as 8- or 16-bit values when larger
    return 1.0 if maximum <= 1 else 255.0 if maximum <= 255 else 65535.0


def _flatten_alpha(img: Image.Image) -> Image.Image:
    """Any 8-bit mode as RGB; transparent pixels composited over BACKGROUND."""
    has_alpha = img.mode in ("RGBA", "LA", "La", "RGBa", "PA") or (
        img.mode in ("P", "L", "RGB") and "transparency" in img.info
    )
    if not has_alpha:
        return img.convert("RGB")
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0].rstrip(".") if text else type(error).__name__


@dataclass
class ImageBatch:
    """Images read from files: the readable ones stacked, and the unreadable ones with reasons."""

    images: torch.Tensor  # (B, 3, size, size) in [0, 1]
    files: list[Path]
    resized: int = 0  # how many of `files` were not already size x size
    skipped: list[UnreadableImage] = field(default_factory=list)


def read_images(files: Iterable[Path], size: int = IMAGE_SIZE) -> ImageBatch:
    """Read several files; unreadable ones are collected in `skipped`, never raised."""
    tensors, ok, skipped, resized = [], [], [], 0
    for file in files:
        try:
            tensor, original = read_image_with_size(file, size)
        except UnreadableImage as error:
            skipped.append(error)
            continue
        tensors.append(tensor)
        ok.append(file)
        resized += original != (size, size)
    images = torch.stack(tensors) if tensors else torch.empty(0, 3, size, size)
    return ImageBatch(images, ok, resized, skipped)
