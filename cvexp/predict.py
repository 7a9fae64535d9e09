"""cvexp-predict: classify an image file or a folder of images with a checkpoint.

cvexp-predict ckpt_path=.../best.ckpt inputs=photos/                # predictions.csv, predictions.png
cvexp-predict ckpt_path=.../best.ckpt inputs=cat.jpg top_k=5 device=cpu out=results/cat
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from cvexp.checkpoint import load_classifier
from cvexp.data.formats import CLASSES
from cvexp.data.image_files import (
    IMAGE_SIZE,
    ImageBatch,
    UnreadableImage,
    find_images,
    read_images,
)
from cvexp.errors import UserError
from cvexp.runtime.exit import exit_on_user_error
from cvexp.runtime.hydra_app import CONFIG_PATH, VERSION_BASE, register_resolvers
from cvexp.viz.figures import save_figure
from cvexp.viz.predictions import labelled_grid_figure

# files printed with their top-1 class (and skipped files listed) before "... and N more"
SHOWN = 10


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Classify every image under `cfg.inputs`; write predictions.csv and predictions.png."""
    if not cfg.get("ckpt_path"):
        raise UserError("cvexp-predict needs a checkpoint; pass ckpt_path=<path to a .ckpt file>.")
    if not cfg.get("inputs"):
        raise UserError(
            "cvexp-predict needs images; pass inputs=<an image file or a folder of images>."
        )
    top_k = _int_key(
        cfg, "top_k", low=1, fix="pass top_k=1 or more (at most the number of classes)"
    )
    batch_size = _int_key(cfg, "batch_size", low=1, fix="pass batch_size=1 or more")
    grid_size = _int_key(cfg, "grid_size", low=0, fix="pass grid_size=0 (no grid) or more")
    out = output_folder(cfg)
    device = resolve_device(str(cfg.get("device", "auto")))
    root = Path(str(cfg.inputs)).expanduser()
    files = find_images(root)
    if not files:
        raise UserError(
            f"No image files under {root} (looked for .png, .jpg, .bmp, .webp, ... recursively); "
            "pass inputs=<an image file or a folder of images>."
        )
    classifier, _ = load_classifier(cfg.ckpt_path, trust=cfg.trust_checkpoint)
    classifier.to(device)
    with torch.inference_mode():
        num_classes = classifier(torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE, device=device)).shape[1]
    if top_k > num_classes:
        raise UserError(
            f"top_k={top_k} is more than the {num_classes} classes the model knows; "
            f"pass top_k between 1 and {num_classes}."
        )
    names = (
        list(CLASSES) if num_classes == len(CLASSES) else [f"class_{i}" for i in range(num_classes)]
    )

    def relative(file: Path) -> str:
        return file.name if root.is_file() else file.relative_to(root).as_posix()

    batches = classify_batches(classifier, files, batch_size, device)
    tally = write_predictions(out / "predictions.csv", batches, top_k, names, relative, grid_size)
    if tally.classified == 0:
        first = tally.skipped[0]
        raise UserError(
            f"{root} is not a readable image ({first.reason}); "
            "pass inputs=<an image file or a folder of images>."
            if root.is_file()
            else f"None of the {len(files)} files under {root} could be read as an image "
            f"(first: {relative(first.path)}: {first.reason}); "
            "pass inputs=<an image file or a folder of images>."
        )
    if tally.classified > SHOWN:
        print(f"... and {tally.classified - SHOWN} more")
    if tally.resized:
        print(
            f"note: {tally.resized} of {tally.classified} images were not "
            f"{IMAGE_SIZE}x{IMAGE_SIZE}; they were resized to {IMAGE_SIZE}x{IMAGE_SIZE}, "
            "as the models expect"
        )
    if tally.skipped:
        write_skipped(out / "skipped.csv", tally.skipped, relative)
        hidden = len(tally.skipped) - SHOWN
        more = f" ({hidden} not shown above)" if hidden > 0 else ""
        print(
            f"skipped {len(tally.skipped)} unreadable file(s){more}; listed in {out / 'skipped.csv'}"
        )
    grid_path = None
    if tally.grid_names:
        title = (
            f"{Path(str(cfg.ckpt_path)).name}: top-1 predictions, "
            f"{len(tally.grid_names)} of {tally.classified} images"
        )
        figure = labelled_grid_figure(
            torch.cat(tally.grid_images),
            torch.cat(tally.grid_probabilities),
            tally.grid_names,
            names,
            title=title,
        )
        grid_path = save_figure(figure, out / "predictions.png")
    also = f" and {grid_path.name}" if grid_path else ""
    print(f"classified {tally.classified} images on {device}; wrote predictions.csv{also} to {out}")
    return {
        "out_dir": out,
        "predictions_csv": out / "predictions.csv",
        "grid_png": grid_path,
        "classified": tally.classified,
        "skipped": [e.path for e in tally.skipped],
    }


@dataclass
class Tally:
    """What write_predictions saw: counts, unreadable files, and the first images for the grid."""

    classified: int = 0
    resized: int = 0
    skipped: list[UnreadableImage] = field(default_factory=list)
    grid_images: list[torch.Tensor] = field(default_factory=list)
    grid_probabilities: list[torch.Tensor] = field(default_factory=list)
    grid_names: list[str] = field(default_factory=list)


def write_predictions(
    csv_path: Path,
    batches: Iterable[tuple[ImageBatch, torch.Tensor]],
    top_k: int,
    names: Sequence[str],
    relative: Callable[[Path], str],
    grid_size: int,
) -> Tally:
    """Write the top-k rows of every batch to `csv_path` (only if at least one image was read:
    it is written under a temporary name and renamed at the end), printing the first few."""
    tally = Tally()
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    partial = csv_path.with_name(f".{csv_path.name}.partial")
    try:
        with partial.open("w", newline="") as f:
            writer = csv.writer(f)
            columns = (f"{c}_{k}" for k in range(1, top_k + 1) for c in ("class", "prob"))
            writer.writerow(["file", *columns])
            for batch, probabilities in batches:
                for error in batch.skipped:
                    if len(tally.skipped) < SHOWN:
                        print(f"skipped {relative(error.path)}: {error.reason}")
                    tally.skipped.append(error)
                if not batch.files:
                    continue
                top_p, top_i = probabilities.topk(top_k, dim=1)  # (B, k) each
                for file, ps, indices in zip(
                    batch.files, top_p.tolist(), top_i.tolist(), strict=True
                ):
                    row = [relative(file)]
                    for p, i in zip(ps, indices, strict=True):
                        row += [names[i], f"{p:.6f}"]
                    writer.writerow(row)
                    if tally.classified < SHOWN:
                        print(f"{row[0]}: {names[indices[0]]} ({ps[0]:.1%})")
                    tally.classified += 1
                tally.resized += batch.resized
                room = grid_size - len(tally.grid_names)
                if room > 0:
                    tally.grid_images.append(batch.images[:room])
                    tally.grid_probabilities.append(probabilities[:room])
                    tally.grid_names += [relative(f) for f in batch.files[:room]]
        if tally.classified:
            os.replace(partial, csv_path)
    finally:
        partial.unlink(missing_ok=True)
    return tally


def classify_batches(
    classifier: torch.nn.Module, files: list[Path], batch_size: int, device: torch.device
) -> Iterator[tuple[ImageBatch, torch.Tensor]]:
    """Read and classify `batch_size` files at a time; yields each batch read and its
    probabilities (B, K) on the CPU."""
    for start in range(0, len(files), batch_size):
        batch = read_images(files[start : start + batch_size], IMAGE_SIZE)
        if batch.files:
            with torch.inference_mode():
                logits = classifier(batch.images.to(device))  # (B, K)
            probabilities = logits.float().softmax(dim=1).cpu()
        else:
            probabilities = torch.empty(0, 0)
        yield batch, probabilities


def output_folder(cfg: DictConfig) -> Path:
    """`out=` if given, else the run's directory; refuses a folder that already has predictions."""
    out = Path(str(cfg.out)).expanduser() if cfg.get("out") else Path(cfg.paths.output_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"out={out} is a file, not a folder; pass out=<a new folder>.")
    if (out / "predictions.csv").exists():
        fresh, n = out, 0
        while (fresh / "predictions.csv").exists():
            n += 1
            fresh = out.with_name(f"{out.name}-{n}")
        raise UserError(
            f"{out} already holds a predictions.csv, which cvexp-predict never overwrites; "
            f"pass a new folder, e.g. out={fresh}."
        )
    return out


def resolve_device(name: str) -> torch.device:
    """'auto' (CUDA when available, else the CPU), 'cpu', or 'cuda' / 'cuda:N'."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UserError(
                f"device={name}, but this machine has no CUDA GPU; pass device=cpu (or auto)."
            )
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(
                f"device={name}, but this machine has {torch.cuda.device_count()} CUDA GPU(s); "
                "pass device=cuda (or auto)."
            )
        return device
    raise UserError(f"device={name} is not a device; pass device=auto, cpu or cuda.")


def write_skipped(
    path: Path, skipped: list[UnreadableImage], relative: Callable[[Path], str]
) -> None:
    """skipped.csv: each unreadable file and why."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "reason"])
        for error in skipped:
            writer.writerow([relative(error.path), error.reason])


def _int_key(cfg: DictConfig, key: str, *, low: int, fix: str) -> int:
    """An integer config value of at least `low`, or a UserError naming the key and the fix."""
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UserError(f"{key}={value} is not valid; {fix}.")
    return value


register_resolvers()


@hydra.main(version_base=VERSION_BASE, config_path=CONFIG_PATH, config_name="predict")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    """Console entry point `cvexp-predict`."""
    predict(cfg)


if __name__ == "__main__":
    main()
