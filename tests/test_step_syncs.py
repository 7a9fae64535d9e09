"""No host-device synchronisation per training step, counted on a CPU-only machine.

On a GPU, anything that reads a tensor's value on the host (`.item()`, `.cpu()`, `.tolist()`,
`bool(t)`, `float(t)`, a data-dependent shape such as `.nonzero()` or `torch.unique`) waits for
the device and stalls the pipeline, and so does a tensor made from Python values
(`torch.tensor(3.0, device="cuda")`), a host-to-device copy. On the CPU the same calls are free, so a regression would go unseen;
this test patches them, runs a real fit of the real config, and records in which training
steps they were called. Only steps that log (trainer.log_every_n_steps) or check the loss
(callbacks.finite_loss.check_every_n_steps) may read values back.
"""

from __future__ import annotations

import traceback
from collections import defaultdict
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cvexp.trainer import build_trainer
from cvexp.training import train

SYNCING_METHODS = [
    "item",
    "cpu",
    "tolist",
    "numpy",
    "nonzero",
    "unique",
    "__bool__",
    "__float__",
    "__int__",
]
# functions that wait for the device too: a data-dependent shape (torch.unique, which
# torchmetrics' argument checks call)...
SYNCING_FUNCTIONS = ["unique", "nonzero"]
# ...or a tensor made from Python values for a device, which on a GPU is a host-to-device copy
# that waits for the queued work (a Python weight given to a metric). Counted when `device=` is
# given: the DataLoader's own host tensors are no copy to the device.
DEVICE_TENSOR_FUNCTIONS = ["tensor", "as_tensor"]


class SyncCounter(Callback):
    """Records host reads of tensor values per global step, during training batches only."""

    def __init__(self) -> None:
        self.active = False
        self.step = -1
        self.calls: dict[int, list[str]] = defaultdict(list)

    def record(self, name: str) -> None:
        if self.active:
            where = traceback.extract_stack(limit=4)[0]
            self.calls[self.step].append(f"{name} at {where.filename}:{where.lineno}")

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self.active, self.step = True, trainer.global_step

    def on_validation_start(self, *args: Any) -> None:
        self.active = False  # validation and epoch ends may compute metrics

    def on_train_epoch_end(self, *args: Any) -> None:
        self.active = False


def add_first_callback(monkeypatch, callback: Callback) -> None:
    """Make train() run `callback` first of all callbacks, so that the step it records is set
    before any other callback's on_train_batch_start (the learning-rate logger logs there)."""
    build = build_trainer

    def build_with_callback_first(cfg, extra):
        trainer = build(cfg, extra)
        trainer.callbacks.insert(0, callback)
        return trainer

    monkeypatch.setattr("cvexp.training.build_trainer", build_with_callback_first)


@pytest.fixture
def sync_counter(monkeypatch) -> SyncCounter:
    counter = SyncCounter()
    for name in SYNCING_METHODS:
        original = getattr(torch.Tensor, name)

        def patched(self, *args, _original=original, _name=name, **kwargs):
            counter.record(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, patched)
    for name in SYNCING_FUNCTIONS:
        original = getattr(torch, name)

        def patched_function(*args, _original=original, _name=name, **kwargs):
            counter.record(f"torch.{_name}")
            return _original(*args, **kwargs)

        monkeypatch.setattr(torch, name, patched_function)
    for name in DEVICE_TENSOR_FUNCTIONS:
        original = getattr(torch, name)

        def patched_factory(*args, _original=original, _name=name, **kwargs):
            if kwargs.get("device") is not None:
                counter.record(f"torch.{_name}(device=...)")
            return _original(*args, **kwargs)

        monkeypatch.setattr(torch, name, patched_factory)
    return counter


def test_training_steps_read_nothing_back_between_logging_steps(
    compose_train, sync_counter: SyncCounter, monkeypatch
) -> None:
    log_every, check_every, steps = 8, 8, 24
    cfg = compose_train(
        "trainer.max_epochs=1",
        f"trainer.limit_train_batches={steps}",
        f"trainer.log_every_n_steps={log_every}",
        f"callbacks.finite_loss.check_every_n_steps={check_every}",
        "callbacks.feature_maps=null",
        "data.val_size=40",
    )
    add_first_callback(monkeypatch, sync_counter)
    summary = train(cfg)
    assert summary["status"] == "completed"
    assert sync_counter.step == steps - 1  # every step ran with the counter
    # Lightning logs when (step + 1) % log_every == 0; the guard checks after every n losses
    allowed = {s for s in range(steps) if (s + 1) % log_every == 0 or (s + 1) % check_every == 0}
    stray = {step: calls for step, calls in sync_counter.calls.items() if step not in allowed}
    assert not stray, f"host reads in non-logging steps: {stray}"


def test_the_learning_rate_is_logged_at_the_logging_steps(compose_train, tmp_path) -> None:
    # logged only where Lightning writes step metrics, so no step's value is thrown away
    cfg = compose_train(
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=7",
        "trainer.log_every_n_steps=3",
        "callbacks.feature_maps=null",
    )
    train(cfg)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    lr_steps = [e.step for e in events.Scalars("lr")]
    assert lr_steps == [e.step for e in events.Scalars("train/loss")] == [2, 5, 8, 11]
    assert len({e.value for e in events.Scalars("lr")}) == 4  # the one-cycle schedule moves


class CudaSyncGuard(Callback):
    """Makes any synchronising CUDA call an error during the training steps that must not sync.

    torch.cuda.set_sync_debug_mode("error") is CUDA's own check, so this catches what the
    CPU test above can only approximate (copies, data-dependent shapes inside kernels).
    """

    def __init__(self, allowed: set[int]) -> None:
        self.allowed = allowed
        self.checked_steps: list[int] = []

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        strict = trainer.global_step not in self.allowed
        torch.cuda.set_sync_debug_mode("error" if strict else "default")
        if strict:
            self.checked_steps.append(trainer.global_step)

    def on_validation_start(self, *args: Any) -> None:
        torch.cuda.set_sync_debug_mode("default")

    def on_train_epoch_end(self, *args: Any) -> None:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("on_device", [False, True])
def test_no_cuda_sync_between_logging_steps(compose_train, monkeypatch, on_device: bool) -> None:
    log_every, steps = 8, 24
    cfg = compose_train(
        "trainer.accelerator=gpu",
        "trainer.precision=bf16-mixed",
        "model.channels_last=true",
        f"data.on_device={str(on_device).lower()}",
        "trainer.max_epochs=1",
        f"trainer.limit_train_batches={steps}",
        f"trainer.log_every_n_steps={log_every}",
        f"callbacks.finite_loss.check_every_n_steps={log_every}",
        "callbacks.feature_maps=null",
        "data.val_size=40",
    )
    allowed = {s for s in range(steps) if (s + 1) % log_every == 0}
    guard = CudaSyncGuard(allowed)
    add_first_callback(monkeypatch, guard)
    try:
        summary = train(cfg)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert summary["status"] == "completed"
    assert len(guard.checked_steps) == steps - len(allowed)
