"""The export formats: a net as a torch.export (.pt2), TorchScript or ONNX file, read back, and
the parity check of such a file against PyTorch.

The exported function is the net itself: float images (B, 3, 32, 32) in [0, 1] -> logits
(B, num_classes). The net owns its normalisation (and, for timm models, its resize), so the
exported file needs no preprocessing outside it. The batch dimension is dynamic.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cvexp.errors import UserError

# torch_export is the recommended one: TorchScript is deprecated upstream in its favour
FORMATS = {"torch_export": ".pt2", "torchscript": ".pt", "onnx": ".onnx"}
# the largest |logit difference| that still passes the parity check
TOLERANCES = {"torch_export": 1e-4, "torchscript": 1e-4, "onnx": 1e-3}
INPUT_NAME, OUTPUT_NAME = "images", "logits"
ONNX_EXPORTERS = ("auto", "dynamo", "legacy")
# ONNX files hold at most 2 GB in one protobuf; larger weights go to a .data file beside it
ONNX_SINGLE_FILE_BYTES = 1_800_000_000
EXPORT_EXTRA = 'pip install -e ".[export]"'


class ImagesToLogits(nn.Module):
    """The exported function: images (B, 3, H, W) in [0, 1] -> logits (B, num_classes)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)  # (B, num_classes)


def deployable(net: nn.Module) -> ImagesToLogits:
    """The net, wrapped with one tensor in and one out, in eval mode, float32, on the CPU."""
    return ImagesToLogits(net).float().cpu().eval()


@contextmanager
def _staged(path: Path) -> Iterator[Path]:
    """A temporary folder beside `path` to write into; the caller moves finished files out of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _publish(staged: Path, path: Path) -> list[Path]:
    """Move a staged file (and an ONNX .data file beside it) to `path`; returns what was written."""
    written = []
    for file in sorted(staged.parent.iterdir()):
        target = path.parent / file.name.replace(staged.name, path.name, 1)
        os.replace(file, target)
        written.append(target)
    return written


def export_torchscript(model: nn.Module, path: Path, example: torch.Tensor) -> Path:
    """Trace `model` on `example` (B, 3, H, W) and save it as TorchScript at `path`."""
    with _staged(path) as staging, warnings.catch_warnings():
        # TorchScript is deprecated in favour of torch.export, but it is still the format that
        # torch.jit.load, LibTorch (C++) and TorchServe read; the tracer's notes are not errors
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.jit")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        with torch.no_grad():
            traced = torch.jit.trace(model, example, check_trace=False)
        staged = staging / path.name
        torch.jit.save(traced, str(staged))
        _publish(staged, path)
    return path


def export_torch_export(model: nn.Module, path: Path, example: torch.Tensor) -> Path:
    """Export `model` with torch.export, the batch dimension dynamic, and save it at `path` (.pt2).

    `example` (B, 3, H, W) needs B >= 2: torch.export specialises a dimension of size 1 (or 0)
    to that constant, which would refuse the dynamic batch.
    """
    if len(example) < 2:
        raise ValueError(f"torch.export needs an example batch of 2 or more, got {len(example)}.")
    # one eager pass first, so that tables a net builds lazily on its first call (the local
    # attention's masks) exist, rather than being created as attributes while export traces
    with torch.no_grad():
        model(example)
    batch = torch.export.Dim("batch", min=1)
    try:
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise UserError(
            f"torch.export could not export this network ({first}); try format=onnx or "
            "format=torchscript."
        ) from err
    with _staged(path) as staging:
        staged = staging / path.name
        torch.export.save(program, str(staged))
        _publish(staged, path)
    return path


def export_onnx(
    model: nn.Module, path: Path, example: torch.Tensor, *, opset: int = 18, exporter: str = "auto"
) -> str:
    """Export `model` as ONNX at `path` with a dynamic batch; returns the exporter used.

    `auto` uses torch.onnx's default (torch.export-based) exporter when onnxscript is installed,
    and falls back to the legacy TorchScript-based one when it is not, or when it fails.
    """
    if exporter not in ONNX_EXPORTERS:
        raise UserError(
            f"onnx.exporter={exporter} is not an exporter; pass onnx.exporter=auto, dynamo or legacy."
        )
    require("onnx", "ONNX export")
    has_onnxscript = importlib.util.find_spec("onnxscript") is not None
    if exporter == "dynamo" and not has_onnxscript:
        require("onnxscript", "the dynamo ONNX exporter")
    large = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    large = large > ONNX_SINGLE_FILE_BYTES
    attempts = ["dynamo", "legacy"] if exporter == "auto" and has_onnxscript else []
    attempts = attempts or (["legacy"] if exporter == "auto" else [exporter])
    for attempt in attempts:
        with _staged(path) as staging:
            staged = staging / path.name
            try:
                _torch_onnx_export(
                    model, staged, example, opset=opset, dynamo=attempt == "dynamo", large=large
                )
            except Exception as err:
                if attempt == attempts[-1]:
                    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
                    raise UserError(
                        f"torch.onnx could not export this network ({first}); try "
                        "onnx.exporter=legacy or dynamo, or format=torchscript."
                    ) from err
                print(f"note: the {attempt} ONNX exporter failed; trying the legacy one")
                continue
            # imported here: onnx is optional (the export extra), and `require` checked it above
            import onnx

            onnx.checker.check_model(str(staged))
            _publish(staged, path)
            return attempt
    raise AssertionError("unreachable")


def _torch_onnx_export(
    model: nn.Module, path: Path, example: torch.Tensor, *, opset: int, dynamo: bool, large: bool
) -> None:
    """One call of torch.onnx.export, quietly, with the batch dimension dynamic."""
    with warnings.catch_warnings(), _quiet_loggers("onnxscript", "onnx_ir", "torch.onnx"):
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*feature will be removed.*")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*Constant folding.*")
        common = {
            "input_names": [INPUT_NAME],
            "output_names": [OUTPUT_NAME],
            "opset_version": opset,
        }
        if dynamo:
            batch = torch.export.Dim("batch", min=1)
            dynamic = {"dynamic_shapes": {INPUT_NAME: {0: batch}}, "external_data": large}
        else:
            dynamic = {"dynamic_axes": {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}}
        torch.onnx.export(model, (example,), str(path), dynamo=dynamo, **common, **dynamic)


@contextmanager
def _quiet_loggers(*names: str) -> Iterator[None]:
    """Raise these loggers to WARNING for a while (the ONNX optimiser logs every pass at INFO,
    which Hydra's logging setup would print)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def load_torchscript(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """A saved TorchScript model, as a function of a CPU image batch."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.jit")
        module = torch.jit.load(str(path), map_location="cpu").eval()

    def run(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(images)

    return run


def load_torch_export(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """A saved torch.export program (.pt2), as a function of a CPU image batch."""
    module = torch.export.load(str(path)).module()  # traced in eval mode: no .eval() needed

    def run(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(images)

    return run


def load_onnx(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """A saved ONNX model in onnxruntime (CPU), as a function of a CPU image batch."""
    require("onnxruntime", "the ONNX parity check")
    # imported here: onnxruntime is optional (the export extra), and `require` checked it above
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: images.numpy()})[0])

    return run


LOADERS: dict[str, Callable[[Path], Callable[[torch.Tensor], torch.Tensor]]] = {
    "torch_export": load_torch_export,
    "torchscript": load_torchscript,
    "onnx": load_onnx,
}


def parity(
    reference: nn.Module,
    exported: Callable[[torch.Tensor], torch.Tensor],
    batches: list[torch.Tensor],
) -> dict[str, Any]:
    """Compare the exported model with PyTorch on image batches (each (B, 3, H, W) in [0, 1]).

    Returns the images compared, the largest |logit difference|, and how many top-1 classes agree.
    """
    max_diff, agree, count = 0.0, 0, 0
    for images in batches:
        with torch.no_grad():
            expected = reference(images).float()  # (B, K)
        got = exported(images).float()  # (B, K)
        max_diff = max(max_diff, (expected - got).abs().max().item())
        agree += int((expected.argmax(dim=1) == got.argmax(dim=1)).sum())
        count += len(images)
    return {
        "images": count,
        "max_abs_diff": max_diff,
        "top1_agree": agree,
        "top1_all_agree": agree == count,
    }


def require(module: str, purpose: str) -> None:
    """A UserError naming the extra to install when `module` is missing."""
    if importlib.util.find_spec(module) is None:
        raise UserError(
            f"{purpose} needs the {module} package, which is not installed; run {EXPORT_EXTRA}."
        )
