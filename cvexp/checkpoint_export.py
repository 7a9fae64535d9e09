"""Export a checkpoint as a model file (torch.export .pt2, TorchScript or ONNX): write it in the
format asked for, check it against PyTorch, and record the result in export.json (what
`cvexp-export` runs).

The model takes float images (B, 3, 32, 32) in [0, 1] and returns logits; the net's own
normalisation is inside it. The formats themselves are in `cvexp.export_formats`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from cvexp.checkpoint import load_classifier
from cvexp.data import CIFAR10DataModule
from cvexp.data.image_files import IMAGE_SIZE
from cvexp.errors import UserError
from cvexp.export_formats import (
    FORMATS,
    LOADERS,
    TOLERANCES,
    deployable,
    export_onnx,
    export_torch_export,
    export_torchscript,
    parity,
    require,
)
from cvexp.models.outputs import logit_count


def export_checkpoint(cfg: DictConfig) -> dict[str, Any]:
    """Export `cfg.ckpt_path` in `cfg.format`, check parity, write the model and export.json;
    returns what export.json records."""
    if not cfg.get("ckpt_path"):
        raise UserError("cvexp-export needs a checkpoint; pass ckpt_path=<path to a .ckpt file>.")
    fmt = cfg.get("format")
    if not fmt:
        raise UserError(
            "cvexp-export needs a format; pass format=torch_export (recommended), onnx or "
            "torchscript."
        )
    if fmt not in FORMATS:
        raise UserError(
            f"format={fmt} is not an export format; pass format=torch_export (recommended), "
            "onnx or torchscript."
        )
    tolerance = cfg.get("tolerance")
    tolerance = TOLERANCES[fmt] if tolerance is None else tolerance
    if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or tolerance < 0:
        raise UserError(
            f"tolerance={tolerance} is not valid; pass a number of at least 0 (or null for "
            f"the default, {TOLERANCES[fmt]:g} for {fmt})."
        )
    run_dir = Path(cfg.paths.output_dir)
    path, record_path = model_path(cfg, fmt), run_dir / "export.json"
    if path.exists():
        raise UserError(
            f"{path} already exists, and cvexp-export never overwrites a file; "
            f"pass out={new_model_path(path, fmt)} (or another new path)."
        )
    if record_path.exists():
        raise UserError(
            f"{record_path} already exists, and cvexp-export never overwrites a file; "
            "pass a new hydra.run.dir (or none, for a fresh dated one)."
        )
    if fmt == "onnx":  # before the slow part: say what to install at once
        require("onnx", "ONNX export")
        require("onnxruntime", "the ONNX parity check")
    batches, sources = parity_batches(cfg)
    classifier, _ = load_classifier(cfg.ckpt_path, trust=cfg.trust_checkpoint)
    model = deployable(classifier.net)
    # 2 images, not 1: torch.export would specialise a batch of 1 instead of keeping it dynamic
    example = torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    details: dict[str, Any] = {}
    if fmt == "torch_export":
        export_torch_export(model, path, example)
        details["torch"] = torch.__version__  # torch.export.load wants a compatible torch
    elif fmt == "torchscript":
        export_torchscript(model, path, example)
    else:
        details["exporter"] = export_onnx(
            model, path, example, opset=int(cfg.onnx.opset), exporter=str(cfg.onnx.exporter)
        )
        details["opset"] = int(cfg.onnx.opset)
    result = parity(model, LOADERS[fmt](path), batches)
    size = path.stat().st_size
    record = {
        "format": fmt,
        "file": str(path.resolve()),
        "bytes": size,
        "ckpt_path": str(Path(str(cfg.ckpt_path)).resolve()),
        "net": (classifier.net_config or {}).get("_target_"),
        "input": {"name": "images", "shape": ["batch", 3, IMAGE_SIZE, IMAGE_SIZE], "range": [0, 1]},
        "output": {"name": "logits", "shape": ["batch", logit_count(model)]},
        **details,
        "parity": {**result, "tolerance": tolerance, "sources": sources},
        "passed": result["max_abs_diff"] <= tolerance,
    }
    if not record["passed"]:
        failed = fresh_name(path.with_name(f"{path.stem}.parity-failed{path.suffix}"))
        os.replace(path, failed)
        record["file"] = str(failed.resolve())
    run_dir.mkdir(parents=True, exist_ok=True)
    record_path.write_text(json.dumps(record, indent=2))
    agree = f"{result['top1_agree']}/{result['images']}"
    if not record["passed"]:
        raise UserError(
            f"The {fmt} model's logits differ from PyTorch's by up to {result['max_abs_diff']:.3g} "
            f"(tolerance {tolerance:g}; top-1 agrees on {agree}), so it was kept only as {failed} "
            f"for inspection; try format={'onnx' if fmt == 'torch_export' else 'torch_export'}, or pass "
            "a larger tolerance= if that difference is acceptable."
        )
    kind = {
        "onnx": f"onnx opset {details.get('opset')}, {details.get('exporter')} exporter",
        "torch_export": f"torch.export, torch {torch.__version__}",
    }.get(fmt, fmt)
    print(
        f"wrote {path} ({human_size(size)}, {kind}; input: images (B, 3, 32, 32) in [0, 1], "
        "output: logits)"
    )
    print(
        f"parity with PyTorch on {result['images']} images ({', '.join(sources)}): "
        f"max |logit difference| {result['max_abs_diff']:.3g} (tolerance {tolerance:g}), "
        f"top-1 agrees on {agree}"
    )
    print(f"details in {record_path}")
    return record


def model_path(cfg: DictConfig, fmt: str) -> Path:
    """`out=` (a file, or a folder to put model.<ext> in), else <run dir>/model.<ext>."""
    name = f"model{FORMATS[fmt]}"
    if not cfg.get("out"):
        return Path(cfg.paths.output_dir) / name
    out = Path(str(cfg.out)).expanduser()
    return out / name if out.is_dir() or str(cfg.out).endswith(("/", os.sep)) else out


def new_model_path(path: Path, fmt: str) -> Path:
    """A name to suggest instead of `path`, which exists: path-1, path-2, ... when it has the
    format's suffix, else model<suffix> (model-1<suffix>, ...) in its folder, never another
    kind of file's name (such as summary-1.json for out=<a run>/summary.json)."""
    suffix = FORMATS[fmt]
    return fresh_name(path if path.suffix == suffix else path.with_name(f"model{suffix}"))


def fresh_name(path: Path) -> Path:
    """`path`, or path-1, path-2, ... (before the suffix): the first that does not exist."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


def parity_batches(cfg: DictConfig) -> tuple[list[torch.Tensor], list[str]]:
    """Random images (one batch of `parity_images`, and a batch of one, so that the dynamic batch
    dimension is checked too), plus CIFAR-10 test images when data.root holds a copy."""
    count = int(cfg.parity_images)
    if count < 1:
        raise UserError(f"parity_images={count} is not valid; pass parity_images=1 or more.")
    generator = torch.Generator().manual_seed(int(cfg.get("seed", 0)))
    images = torch.rand(count, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    batches, sources = [images, images[:1]], [f"{count + 1} random"]
    test_count = int(cfg.get("parity_test_images") or 0)
    if test_count > 0:
        test_images = cifar10_test_images(str(cfg.data.root), test_count)
        if test_images is not None:
            batches.append(test_images)
            sources.append(f"{len(test_images)} CIFAR-10 test")
    return batches, sources


def cifar10_test_images(root: str, count: int) -> torch.Tensor | None:
    """The first `count` CIFAR-10 test images at `root` as (N, 3, 32, 32) in [0, 1], or None
    when there is no copy there (never downloaded here)."""
    datamodule = CIFAR10DataModule(root, download=False, cache=True)
    try:
        datamodule.setup("test")
    except UserError:
        print(f"note: no CIFAR-10 at {root}; the parity check uses random images only")
        return None
    return datamodule.data.test_images[:count].permute(0, 3, 1, 2).float() / 255


def human_size(size: int) -> str:
    """Bytes as B, KB, MB or GB (powers of 1000)."""
    for unit in ("B", "KB", "MB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.2f} GB"
