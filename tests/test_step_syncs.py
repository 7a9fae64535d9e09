"""No host-device synchronisation per training step, counted on a CPU-only machine.

On a GPU, anything that reads a tensor's value on the host (`.item()`, `.cpu()`, `.tolist()`,
`bool(t)`, `float(t)`, a data-dependent shape such as `.nonzero()`) waits for the device and
stalls the pipeline. On the CPU the same calls are free, so a regression would go unseen;
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

from cvexp.train import train

SYNCING_METHODS = ["item", "cpu", "tolist", "numpy", "nonzero", "__bool__", "__float__", "__int__"]


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


@pytest.fixture
def sync_counter(monkeypatch) -> SyncCounter:
    counter = SyncCounter()
    for name in SYNCING_METHODS:
        original = getattr(torch.Tensor, name)

        def patched(self, *args, _original=original, _name=name, **kwargs):
            counter.record(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, patched)
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
    from cvexp.runtime import trainer as trainer_module

    build = trainer_module.build_trainer
    monkeypatch.setattr(
        "cvexp.train.build_trainer",
        lambda cfg, extra: build(cfg, [*extra, sync_counter]),
    )
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
