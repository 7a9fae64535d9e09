"""cvexp-visualize: filters, per-layer feature maps and attention maps of a checkpoint, as PNGs.

cvexp-visualize ckpt_path=.../best.ckpt                        # test image 0 of CIFAR-10
cvexp-visualize ckpt_path=.../best.ckpt image=cat.png          # any image file
cvexp-visualize ckpt_path=.../best.ckpt test_index=123 layers=[0,4,10]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from cvexp.checkpoint import load_classifier
from cvexp.data import CLASSES, CIFAR10DataModule
from cvexp.data.image_files import IMAGE_SIZE, UnreadableImage, read_image_with_size
from cvexp.errors import UserError
from cvexp.runtime.exit import exit_on_user_error
from cvexp.runtime.hydra_app import CONFIG_PATH, VERSION_BASE, register_resolvers
from cvexp.viz.figures import predictions_figure, save_figure
from cvexp.viz.network import network_figures


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
        datamodule.setup("test")
    except UserError as error:
        raise UserError(
            f"{error} Without the dataset, pass image=<path to an image file> instead."
        ) from None
    count = len(datamodule.data.test_labels)
    if not 0 <= cfg.test_index < count:
        raise UserError(
            f"test_index={cfg.test_index} is out of range; the test set has {count} images (0 to {count - 1})."
        )
    image = datamodule.data.test_images[cfg.test_index].permute(2, 0, 1).float() / 255
    return image, int(datamodule.data.test_labels[cfg.test_index])


def visualize(cfg: DictConfig) -> dict[str, Any]:
    """Write the figures for one image into the output dir; returns the written paths."""
    if not cfg.get("ckpt_path"):
        raise UserError(
            "cvexp-visualize needs a checkpoint; pass ckpt_path=<path to a .ckpt file>."
        )
    classifier, _ = load_classifier(cfg.ckpt_path, trust=cfg.trust_checkpoint)
    if cfg.get("image"):
        image, label, source = load_image_file(cfg.image), None, Path(cfg.image).name
    else:
        image, label = load_test_image(cfg)
        source = f"test image {cfg.test_index}"
    with torch.no_grad():
        probabilities = classifier(image[None]).softmax(dim=1)[0]
    predicted = int(probabilities.argmax())
    truth = f", true: {CLASSES[label]}" if label is not None else ""
    caption = f"{source}: predicted {CLASSES[predicted]} ({probabilities[predicted]:.0%}){truth}"
    out = Path(cfg.paths.output_dir)
    layers = cfg.get("layers")
    try:
        figures = network_figures(
            classifier.net, image, caption=caption, layers=layers, top_k=cfg.top_k
        )
    except IndexError as error:
        raise UserError(f"{error}; pass layers=[...] with indices in that range.") from None
    written = [save_figure(fig, out / f"{name}.png") for name, fig in figures.items()]
    labels = torch.tensor([label if label is not None else predicted])
    written.append(
        save_figure(
            predictions_figure(image[None], probabilities[None], labels, CLASSES, title=caption),
            out / "prediction.png",
        )
    )
    print(f"wrote {len(written)} figures to {out}")
    return {"out_dir": out, "files": written, "predicted": CLASSES[predicted]}


register_resolvers()


@hydra.main(version_base=VERSION_BASE, config_path=CONFIG_PATH, config_name="visualize")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    """Console entry point `cvexp-visualize`."""
    visualize(cfg)


if __name__ == "__main__":
    main()
