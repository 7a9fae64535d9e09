"""The figures of a checkpoint: its filters, the feature maps of one image through its layers,
its attention maps and its prediction for that image, as PNGs (what `cvexp-visualize` runs).

The image is any image file, or a test image of the CIFAR-10 copy at data.root (never
downloaded here).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from cvexp.checkpoint import load_classifier
from cvexp.data import CLASSES, CIFAR10DataModule
from cvexp.data.formats import find_source
from cvexp.data.image_files import IMAGE_SIZE, UnreadableImage, read_image_with_size
from cvexp.errors import UserError
from cvexp.viz.figures import predictions_figure, save_figure
from cvexp.viz.network import iter_network_figures


def load_image_file(path: str | Path) -> torch.Tensor:
    """Any image file as (3, 32, 32) float in [0, 1] (16-bit and alpha handled); other sizes
    are resized, with a notice."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"Image not found: {file}; pass image=<path to a .png or .jpg file>.")
    try:
        image, (width, height) = read_image_with_size(file, IMAGE_SIZE)
    except UnreadableImage as error:
        raise UserError(
            f"{file} is not a readable image ({error.reason}); pass image=<path to a .png or .jpg file>."
        ) from None
    if (width, height) != (IMAGE_SIZE, IMAGE_SIZE):
        print(
            f"note: {file.name} is {width}x{height}; resized to {IMAGE_SIZE}x{IMAGE_SIZE}, as the model expects"
        )
    return image


def load_test_image(cfg: DictConfig) -> tuple[torch.Tensor, int]:
    """Test image `test_index` of the CIFAR-10 copy at data.root (never downloaded here)."""
    datamodule = CIFAR10DataModule(cfg.data.root, download=False, cache=True)
    try:
        found = find_source(datamodule.root) is not None
        if found:
            datamodule.setup("test")
    except UserError as error:  # a copy that cannot be read
        raise UserError(
            f"{error} Without the dataset, pass image=<path to an image file> instead."
        ) from None
    if not found:
        raise UserError(
            f"No CIFAR-10 found at {datamodule.root}, and cvexp-visualize never downloads it; "
            "pass image=<path to an image file>, or data.root=<a folder that holds CIFAR-10>."
        )
    count = len(datamodule.data.test_labels)
    if not 0 <= cfg.test_index < count:
        raise UserError(
            f"test_index={cfg.test_index} is out of range; the test set has {count} images (0 to {count - 1})."
        )
    image = datamodule.data.test_images[cfg.test_index].permute(2, 0, 1).float() / 255
    return image, int(datamodule.data.test_labels[cfg.test_index])


def class_names(count: int) -> list[str]:
    """Names for the outputs of a model of `count` classes: CIFAR-10's ten (cvexp trains on
    their labels, 0 to 9), then `class 10`, `class 11`, ... for any further outputs."""
    return [*CLASSES, *(f"class {i}" for i in range(len(CLASSES), count))]


def visualize(cfg: DictConfig) -> dict[str, Any]:
    """Write the figures for one image into the output dir; returns the written paths.

    Each figure is saved and closed before the next is drawn: none is left open.
    """
    if not cfg.get("ckpt_path"):
        raise UserError(
            "cvexp-visualize needs a checkpoint; pass ckpt_path=<path to a .ckpt file>."
        )
    top_k = cfg.get("top_k")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise UserError(f"top_k={top_k} is not valid: it would show nothing; pass top_k=1 or more.")
    classifier, _ = load_classifier(cfg.ckpt_path, trust=cfg.trust_checkpoint)
    if cfg.get("image"):
        image, label, source = load_image_file(cfg.image), None, Path(cfg.image).name
    else:
        image, label = load_test_image(cfg)
        source = f"test image {cfg.test_index}"
    with torch.no_grad():
        probabilities = classifier(image[None]).softmax(dim=1)[0]
    names = class_names(len(probabilities))
    predicted = int(probabilities.argmax())
    truth = f", true: {CLASSES[label]}" if label is not None else ""
    caption = f"{source}: predicted {names[predicted]} ({probabilities[predicted]:.0%}){truth}"
    out = Path(cfg.paths.output_dir)
    try:
        figures = iter_network_figures(
            classifier.net, image, caption=caption, layers=cfg.get("layers"), top_k=top_k
        )
    except IndexError as error:
        raise UserError(f"{error}; pass layers=[...] with indices in that range.") from None
    written = [save_figure(fig, out / f"{name}.png") for name, fig in figures]
    labels = torch.tensor([label if label is not None else predicted])
    written.append(
        save_figure(
            predictions_figure(image[None], probabilities[None], labels, names, title=caption),
            out / "prediction.png",
        )
    )
    print(f"wrote {len(written)} figures to {out}")
    return {"out_dir": out, "files": written, "predicted": names[predicted]}
