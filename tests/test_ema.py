"""cvexp/callbacks/ema.py's start options (update_starting_at_step / _epoch), through real tiny
fits of the composed config (2 epochs of 2 optimiser steps): before the start the average is
the live weights, from the start it averages beginning with the weights it starts from."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from cvexp.callbacks.ema import WeightEMA
from cvexp.errors import user_error_message
from cvexp.training import train

PROBE = ["callbacks=ema", "+callbacks.probe._target_=tests.test_ema.StepProbe"]


def float_weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of the floating-point state (parameters and BN statistics)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items() if v.is_floating_point()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class StepProbe(Callback):
    """The live weights after every optimiser step, and at each validation the weights validated
    (the module's) and the live ones (held by the average model while validation runs).

    Added after the configured callbacks, so its hooks run after WeightEMA's of the same name.
    """

    last: ClassVar[StepProbe | None] = None

    def __init__(self) -> None:
        StepProbe.last = self
        self.after_step: list[dict[str, torch.Tensor]] = []  # index: the 0-based step
        self.validated: dict[int, dict[str, torch.Tensor]] = {}
        self.live: dict[int, dict[str, torch.Tensor]] = {}
        self.val_acc: dict[int, float] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.after_step.append(float_weights(pl_module.net))

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        (ema,) = [c for c in trainer.callbacks if isinstance(c, WeightEMA)]
        self.validated[trainer.current_epoch] = float_weights(pl_module.net)
        self.live[trainer.current_epoch] = float_weights(ema._average_model.module.net)


def average_of(steps: list[dict[str, torch.Tensor]], decay: float) -> dict[str, torch.Tensor]:
    """The EMA of a run of weights, beginning with a copy of the first."""
    average = dict(steps[0])
    for weights in steps[1:]:
        average = {k: decay * average[k] + (1 - decay) * weights[k] for k in average}
    return average


def close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_by_default_the_average_starts_with_the_second_epoch(compose_train) -> None:
    cfg = compose_train(*PROBE)
    assert cfg.callbacks.ema.update_starting_at_epoch == 1
    assert cfg.callbacks.ema.update_starting_at_step is None
    assert train(cfg)["status"] == "completed"
    probe = StepProbe.last
    assert len(probe.after_step) == 4  # steps 0, 1 in epoch 0; 2, 3 in epoch 1
    # epoch 0: the live weights are validated (val/acc is the raw net's), not the random init
    assert same(probe.validated[0], probe.live[0])
    assert same(probe.validated[0], probe.after_step[1])
    # epoch 1: the average of the steps from the start, beginning with the weights of step 2
    assert not same(probe.validated[1], probe.live[1])
    assert same(probe.live[1], probe.after_step[3])
    assert close(probe.validated[1], average_of(probe.after_step[2:], cfg.callbacks.ema.decay))


def test_a_start_step_holds_back_the_average_until_that_step(compose_train) -> None:
    cfg = compose_train(
        *PROBE,
        "callbacks.ema.update_starting_at_epoch=null",
        "callbacks.ema.update_starting_at_step=2",
        "callbacks.ema.decay=0.5",
    )
    assert train(cfg)["status"] == "completed"
    probe = StepProbe.last
    assert same(probe.validated[0], probe.live[0])  # steps 0 and 1: followed, not averaged
    assert not same(probe.validated[1], probe.live[1])
    assert close(probe.validated[1], average_of(probe.after_step[2:], 0.5))


def test_with_no_start_the_average_begins_at_the_first_step(compose_train) -> None:
    cfg = compose_train(*PROBE, "callbacks.ema.update_starting_at_epoch=null")
    assert train(cfg)["status"] == "completed"
    probe = StepProbe.last
    assert not same(probe.validated[0], probe.live[0])
    assert close(probe.validated[1], average_of(probe.after_step, cfg.callbacks.ema.decay))


def test_a_run_resumed_before_the_start_averages_from_the_start(
    compose_train, tmp_path: Path
) -> None:
    first = train(compose_train("callbacks=ema", "trainer.max_epochs=1"))
    last_ckpt = Path(first["best_model_path"]).parent / "last.ckpt"
    saved = torch.load(last_ckpt, map_location="cpu", weights_only=True)
    net = [key for key in saved["current_model_state"] if key.startswith("net.")]
    for key in net:  # before the start the average is the live weights
        assert torch.equal(saved["state_dict"][key], saved["current_model_state"][key]), key
    assert int(saved["averaging_state"]["n_averaged"]) == 0  # nothing averaged yet
    cfg = compose_train(*PROBE, f"ckpt_path={last_ckpt}", run_dir=tmp_path / "run")
    assert train(cfg)["status"] == "completed"
    probe = StepProbe.last
    assert len(probe.after_step) == 2  # steps 2 and 3, in epoch 1
    assert close(probe.validated[1], average_of(probe.after_step, cfg.callbacks.ema.decay))


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        (
            "callbacks.ema.update_starting_at_epoch=-1",
            "callbacks.ema.update_starting_at_epoch=-1 is not an epoch to start from; pass 0 or more",
        ),
        (
            "callbacks.ema.update_starting_at_step=-10",
            "callbacks.ema.update_starting_at_step=-10 is not an optimiser step to start from",
        ),
        (
            "callbacks.ema.update_starting_at_step=1.5",
            "callbacks.ema.update_starting_at_step=1.5 is not an optimiser step",
        ),
    ],
)
def test_a_start_that_cannot_be_is_refused_in_one_sentence(
    compose_train, override: str, fragment: str
) -> None:
    with pytest.raises(Exception) as info:
        train(compose_train("callbacks=ema", override))
    message = user_error_message(info.value) or ""
    assert fragment in message
    assert message.count(". ") == 0 and message.endswith(".")  # one sentence
