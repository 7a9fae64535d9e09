"""Training-step throughput of the real cvexp-train fit loop against a plain PyTorch loop.

Ours: the composed `train` config (VGG16-BN by default) through `build_trainer` and
`Trainer.fit`, with its logging, metrics, LR logger and epoch-end checkpointing (best and
last); only the progress bar, validation and early stopping are off. The plain loop:

    for x, y in loader:
        opt.zero_grad(); loss = F.cross_entropy(net(x), y); loss.backward(); opt.step()

Both use the same net, the same DataModule loader and on-device augmentation, the same
batch and number of steps, so the ratio isolates what Lightning and our callbacks cost.
The timed window starts at batch `warmup` and, for ours, ends after the epoch-end
checkpoints are written.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig

from cvexp.benchmarks.timing import Measurement, interleaved_medians, synchronize
from cvexp.data.augment import augment_batch
from cvexp.runtime.config import compose_config
from cvexp.runtime.hardware import cpu_computes_bf16
from cvexp.trainer import build_trainer


class StepTimer(Callback):
    """Wall-clock marks inside a fit: end of the warm-up batches, and the end of training."""

    def __init__(self, warmup: int, device: torch.device) -> None:
        self.warmup, self.device = warmup, device
        self.fit_start = self.timed_start = self.last_batch_end = self.train_end = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fit_start = time.perf_counter()

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx == self.warmup:
            synchronize(self.device)
            self.timed_start = time.perf_counter()

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        synchronize(self.device)
        self.last_batch_end = time.perf_counter()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        synchronize(self.device)
        self.train_end = time.perf_counter()


# A small, fast net for the per-step overhead: VGG11 at 1/8 width (its plain CPU step at
# batch 64 takes a few milliseconds), so that any per-step cost of ours is not hidden.
SMALL_NET = ("model.net.depth=11", "model.net.width=0.125", "model.net.head_width=64")


def fit_overrides(
    *,
    data_root: Path,
    batch_size: int,
    warmup: int,
    steps: int,
    accelerator: str,
    model: str,
    model_overrides: tuple[str, ...] = (),
) -> list[str]:
    """cvexp-train overrides for one benchmark epoch of warmup + steps batches, no validation."""
    return [
        f"model={model}",
        *model_overrides,
        f"data.root={data_root}",
        "data.download=false",
        f"data.batch_size={batch_size}",
        "data.val_size=100",
        f"trainer.accelerator={accelerator}",
        "trainer.devices=1",
        "trainer.max_epochs=1",
        f"trainer.limit_train_batches={warmup + steps}",
        "trainer.limit_val_batches=0",
        "trainer.num_sanity_val_steps=0",
        "trainer.enable_progress_bar=false",
        "callbacks.progress_bar=null",
        "callbacks.early_stopping=null",
        "callbacks.model_checkpoint.monitor=null",  # no validation: checkpoint every epoch end
        "callbacks.model_checkpoint.filename='epoch{epoch:03d}'",
        "callbacks.feature_maps=null",
        "+trainer.enable_model_summary=false",
    ]


class LightningFit:
    """Runs one real fit per call and keeps its timings; returns the images in the timed window."""

    def __init__(
        self, overrides: list[str], *, workdir: Path, warmup: int, steps: int, device: torch.device
    ) -> None:
        self.overrides, self.workdir = overrides, workdir
        self.warmup, self.steps, self.device = warmup, steps, device
        self.warmup_seconds: list[float] = []
        self.epoch_end_seconds: list[float] = []
        self.steps_only_rates: list[float] = []
        self._runs = 0

    def __call__(self) -> tuple[int, float]:
        self._runs += 1
        cfg = compose_config("train", self.overrides, self.workdir / f"fit-{self._runs}")
        datamodule = instantiate(cfg.data)
        classifier = instantiate(cfg.model)
        timer = StepTimer(self.warmup, self.device)
        trainer = build_trainer(cfg, [timer])
        trainer.fit(classifier, datamodule=datamodule)
        images = self.steps * cfg.data.batch_size
        self.warmup_seconds.append(timer.timed_start - timer.fit_start)
        self.epoch_end_seconds.append(timer.train_end - timer.last_batch_end)
        self.steps_only_rates.append(images / (timer.last_batch_end - timer.timed_start))
        return images, timer.train_end - timer.timed_start


def plain_loop(cfg: DictConfig, *, warmup: int, steps: int, device: torch.device) -> Measurement:
    """A hand-written loop over the same net, loader and augmentation; returns the runner."""
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    optimizer_cfg = cfg.model.optimizer

    def run() -> tuple[int, float]:
        net = instantiate(cfg.model.net).to(device).train()
        opt = torch.optim.SGD(
            net.parameters(),
            lr=optimizer_cfg.lr,
            momentum=optimizer_cfg.momentum,
            nesterov=optimizer_cfg.nesterov,
            weight_decay=optimizer_cfg.weight_decay,
        )
        for i, (x, y) in enumerate(datamodule.train_dataloader()):
            if i == warmup:
                synchronize(device)
                start = time.perf_counter()
            if i == warmup + steps:
                break
            x, y = augment_batch(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)
            opt.zero_grad()
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            opt.step()
        synchronize(device)
        return steps * cfg.data.batch_size, time.perf_counter() - start

    return run


def quiet_lightning() -> None:
    """Lightning's per-fit banners ("GPU available", "Trainable params") would flood the table."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)


# The speed options, each one cvexp-train override, measured against the same fit without it.
OPTIONS = {
    "bf16_mixed": "trainer.precision=bf16-mixed",
    "channels_last": "model.channels_last=true",
    "compile": "model.compile=true",
}

# Why an option is not measured (bench.json's `options_skipped`, a row of the table each)
NOT_IN_QUICK = "not measured in --quick: a few cold steps say nothing of a speed-up"
BF16_EMULATED = (
    "not measured: this CPU emulates bf16 (it lacks AVX512-BF16 and AMX), slower than "
    "float32, and one fit takes minutes (13 on an AVX2 EPYC)"
)
COMPILE_ON_CPU = (
    "not measured on a CPU: compiling VGG16-BN takes minutes on a few cores, too long for the "
    "bench's 10 minutes; time it on a GPU (--device cuda), or on a CPU with "
    "docs/cpu_preset_options.py"
)


def skipped_options(device: str, *, quick: bool) -> dict[str, str]:
    """The speed options not measured on `device`, each with why: every one in a quick run; on
    a CPU, compile, and bf16 where the CPU does not compute it natively (the same check as the
    CPU presets' precision)."""
    if quick:
        return dict.fromkeys(OPTIONS, NOT_IN_QUICK)
    if torch.device(device).type != "cpu":
        return {}
    skipped = {"compile": COMPILE_ON_CPU}
    if not cpu_computes_bf16():
        skipped["bf16_mixed"] = BF16_EMULATED
    return {name: skipped[name] for name in OPTIONS if name in skipped}  # in OPTIONS' order


def measure(
    *,
    data_root: Path,
    workdir: Path,
    model: str = "vgg16_bn",
    model_overrides: tuple[str, ...] = (),
    batch_size: int = 64,
    warmup: int = 2,
    steps: int = 10,
    repeats: int = 3,
    options: tuple[str, ...] = tuple(OPTIONS),
    device: str = "cpu",
    breakdown: bool = False,
) -> dict[str, Any]:
    """Framework overhead (ours / plain) and the speed-up of each option (with / without).

    All candidates are interleaved repeat by repeat; each figure is a ratio of medians. With
    `breakdown`, one more profiled fit says where our step's time goes (`hook_breakdown`).
    """
    quiet_lightning()
    dev = torch.device(device)
    accelerator = "gpu" if dev.type == "cuda" else "cpu"
    base = fit_overrides(
        data_root=data_root,
        batch_size=batch_size,
        warmup=warmup,
        steps=steps,
        accelerator=accelerator,
        model=model,
        model_overrides=model_overrides,
    )
    cfg = compose_config("train", base, workdir / "plain")
    fits = {
        name: LightningFit(
            [*base, *extra], workdir=workdir / name, warmup=warmup, steps=steps, device=dev
        )
        for name, extra in [("ours", []), *((o, [OPTIONS[o]]) for o in options)]
    }
    candidates: dict[str, Measurement] = {
        "plain": plain_loop(cfg, warmup=warmup, steps=steps, device=dev),
        **fits,
    }
    rates = interleaved_medians(candidates, repeats=repeats)
    ours = rates["ours"]["median"]
    overhead = {
        "ratio": ours / rates["plain"]["median"],
        "ours_images_per_s": rates["ours"],
        "plain_images_per_s": rates["plain"],
        "ratio_steps_only": median(fits["ours"].steps_only_rates) / rates["plain"]["median"],
        "epoch_end_checkpoint_seconds": median(fits["ours"].epoch_end_seconds),
        "model": " ".join([model, *model_overrides]),
        "plain_step_ms": 1000 * batch_size / rates["plain"]["median"],
        "batch_size": batch_size,
        "warmup_steps": warmup,
        "timed_steps": steps,
        "repeats": repeats,
    }
    if breakdown:
        overhead["breakdown_ms_per_step"] = hook_breakdown(
            base, workdir=workdir, warmup=warmup, steps=steps
        )
    option_results: dict[str, Any] = {}
    for name in options:
        option_results[name] = {
            "override": OPTIONS[name],
            "speedup": rates[name]["median"] / ours,
            "images_per_s": rates[name],
        }
    if "compile" in options:  # the first compiled fit compiles; later ones reuse the code
        option_results["compile"]["compile_seconds"] = fits["compile"].warmup_seconds[0] - median(
            fits["ours"].warmup_seconds
        )
    return {"framework_overhead": overhead, "options": option_results}


def hook_breakdown(
    overrides: list[str], *, workdir: Path, warmup: int, steps: int, top: int = 12
) -> dict[str, float]:
    """Where a training step's time goes: milliseconds per step of each action Lightning's
    SimpleProfiler records in one real fit of `overrides`, the `top` largest.

    Actions run every step (our hooks and callbacks, the batch transfer and augmentation hook,
    the training step, backward, the optimiser step) count with their median after the
    warm-up; actions run several times per step with their total per step. Actions nest
    (`run_training_batch` holds the training step, backward and optimiser step), so the
    figures do not add up to the step time.
    """
    cfg = compose_config("train", [*overrides, "+trainer.profiler=simple"], workdir / "profiled")
    datamodule = instantiate(cfg.data)
    classifier = instantiate(cfg.model)
    trainer = build_trainer(cfg, [])
    trainer.fit(classifier, datamodule=datamodule)
    steps_run = warmup + steps
    per_step: dict[str, float] = {}
    for action, durations in trainer.profiler.recorded_durations.items():
        if len(durations) == steps_run:
            per_step[action] = 1000 * median(durations[warmup:])
        elif len(durations) > steps_run:
            per_step[action] = 1000 * sum(durations) / steps_run
    largest = sorted(per_step.items(), key=lambda item: item[1], reverse=True)[:top]
    return {action: round(ms, 3) for action, ms in largest}


def make_workdir() -> Path:
    """A scratch folder for the benchmark's runs, removed by the caller."""
    return Path(tempfile.mkdtemp(prefix="cvexp-bench-"))
