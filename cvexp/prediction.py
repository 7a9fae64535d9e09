"""Classify image files with a checkpoint: `predict` returns the top-k classes of every image as
a table; the files `cvexp-predict` writes from it (predictions.csv, skipped.csv, the labelled
grid predictions.png) and what it prints are separate functions.

    table = predict("best.ckpt", "photos/", top_k=5)
    for row in table.rows:
        print(row.file, row.classes[0], row.probabilities[0])
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from cvexp.checkpoint import load_classifier
from cvexp.data.formats import CLASSES
from cvexp.data.image_files import IMAGE_SIZE, ImageBatch, find_images, read_images
from cvexp.errors import UserError
from cvexp.models.outputs import logit_count
from cvexp.viz.figures import save_figure
from cvexp.viz.predictions import labelled_grid_figure

# files printed with their top-1 class (and skipped files listed) before "... and N more"
SHOWN = 10


@dataclass(frozen=True)
class Prediction:
    """One image's top-k classes, the most probable first."""

    file: str  # as predictions.csv names it: relative to the folder given, or the file's name
    path: Path
    classes: tuple[str, ...]
    probabilities: tuple[float, ...]


@dataclass(frozen=True)
class Skipped:
    """A file that could not be read as an image, and why."""

    file: str
    path: Path
    reason: str


@dataclass
class PredictionTable:
    """What `predict` found: a row per image read, in file order, and the files skipped."""

    inputs: Path
    rows: list[Prediction]
    skipped: list[Skipped]
    class_names: list[str]
    top_k: int
    # (N, num_classes) on the CPU: every class's probability, for row i in row i
    probabilities: torch.Tensor
    resized: int  # how many images were not 32x32 and were resized
    device: torch.device


def predict(
    ckpt_path: str | Path,
    inputs: str | Path,
    *,
    top_k: int = 3,
    batch_size: int = 256,
    device: str = "auto",
    trust_checkpoint: bool = False,
) -> PredictionTable:
    """Classify every image under `inputs` (an image file, or a folder searched recursively).

    Unreadable files (corrupt, truncated, broken links, ...) are skipped and listed with the
    reason; a UserError when none can be read, or for settings that cannot work.
    """
    top_k = int_setting(
        "top_k", top_k, low=1, fix="pass top_k=1 or more (at most the number of classes)"
    )
    batch_size = int_setting("batch_size", batch_size, low=1, fix="pass batch_size=1 or more")
    torch_device = resolve_device(str(device))
    root = Path(str(inputs)).expanduser()
    files = find_images(root)
    if not files:
        raise UserError(
            f"No image files under {root} (looked for .png, .jpg, .bmp, .webp, ... recursively); "
            "pass inputs=<an image file or a folder of images>."
        )
    classifier, _ = load_classifier(ckpt_path, trust=trust_checkpoint)
    classifier.to(torch_device)
    num_classes = logit_count(classifier)
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

    rows, skipped, probabilities, resized = [], [], [], 0
    for batch, batch_probabilities in classify_batches(classifier, files, batch_size, torch_device):
        skipped += [Skipped(relative(e.path), e.path, e.reason) for e in batch.skipped]
        if not batch.files:
            continue
        top_p, top_i = batch_probabilities.topk(top_k, dim=1)  # (B, k) each
        for file, ps, indices in zip(batch.files, top_p.tolist(), top_i.tolist(), strict=True):
            rows.append(
                Prediction(relative(file), file, tuple(names[i] for i in indices), tuple(ps))
            )
        probabilities.append(batch_probabilities)
        resized += batch.resized
    if not rows:
        first = skipped[0]
        raise UserError(
            f"{root} is not a readable image ({first.reason}); "
            "pass inputs=<an image file or a folder of images>."
            if root.is_file()
            else f"None of the {len(files)} files under {root} could be read as an image "
            f"(first: {first.file}: {first.reason}); "
            "pass inputs=<an image file or a folder of images>."
        )
    return PredictionTable(
        inputs=root,
        rows=rows,
        skipped=skipped,
        class_names=names,
        top_k=top_k,
        probabilities=torch.cat(probabilities),
        resized=resized,
        device=torch_device,
    )


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


def check_output_folder(out: Path) -> Path:
    """`out`, when it can take the prediction files: a folder (or none yet) without a
    predictions.csv, which is never overwritten."""
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


def write_predictions_csv(table: PredictionTable, path: Path) -> Path:
    """predictions.csv: `file, class_1, prob_1, class_2, prob_2, ...`, a row per image. Written
    under a temporary name and renamed when complete, so a path never holds half a table."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        with partial.open("w", newline="") as f:
            writer = csv.writer(f)
            columns = (f"{c}_{k}" for k in range(1, table.top_k + 1) for c in ("class", "prob"))
            writer.writerow(["file", *columns])
            for row in table.rows:
                cells = [row.file]
                for name, probability in zip(row.classes, row.probabilities, strict=True):
                    cells += [name, f"{probability:.6f}"]
                writer.writerow(cells)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def write_skipped_csv(table: PredictionTable, path: Path) -> Path:
    """skipped.csv: each unreadable file and why."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "reason"])
        for skipped in table.skipped:
            writer.writerow([skipped.file, skipped.reason])
    return path


def save_prediction_grid(
    table: PredictionTable, path: Path, *, count: int, title: str
) -> Path | None:
    """predictions.png: the first `count` images, each titled with its top-1 class and its name
    (None when there are none to draw). The images are read again from their files."""
    shown = table.rows[:count]
    if not shown:
        return None
    batch = read_images([row.path for row in shown], IMAGE_SIZE)
    index = {row.path: i for i, row in enumerate(shown)}
    kept = [index[file] for file in batch.files]  # a file that changed since is left out
    if not kept:
        return None
    figure = labelled_grid_figure(
        batch.images,
        table.probabilities[kept],
        [shown[i].file for i in kept],
        table.class_names,
        title=title,
    )
    return save_figure(figure, path)


def print_report(table: PredictionTable, out: Path, *, grid: Path | None) -> None:
    """What cvexp-predict prints: the first files and their top-1 class, the files skipped, and
    what it wrote into `out` (predictions.csv, skipped.csv when files were skipped, and `grid`)."""
    for skipped in table.skipped[:SHOWN]:
        print(f"skipped {skipped.file}: {skipped.reason}")
    for row in table.rows[:SHOWN]:
        print(f"{row.file}: {row.classes[0]} ({row.probabilities[0]:.1%})")
    if len(table.rows) > SHOWN:
        print(f"... and {len(table.rows) - SHOWN} more")
    if table.resized:
        print(
            f"note: {table.resized} of {len(table.rows)} images were not "
            f"{IMAGE_SIZE}x{IMAGE_SIZE}; they were resized to {IMAGE_SIZE}x{IMAGE_SIZE}, "
            "as the models expect"
        )
    if table.skipped:
        hidden = len(table.skipped) - SHOWN
        more = f" ({hidden} not shown above)" if hidden > 0 else ""
        print(
            f"skipped {len(table.skipped)} unreadable file(s){more}; listed in "
            f"{out / 'skipped.csv'}"
        )
    also = f" and {grid.name}" if grid else ""
    print(
        f"classified {len(table.rows)} images on {table.device}; wrote predictions.csv{also} "
        f"to {out}"
    )


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


def int_setting(key: str, value: object, *, low: int, fix: str) -> int:
    """An integer setting of at least `low`, or a UserError naming the key and the fix."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UserError(f"{key}={value} is not valid; {fix}.")
    return value
