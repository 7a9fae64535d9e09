"""ImageClassifier: the LightningModule that trains any net: loss, metrics, optimiser, logging."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from cvexp.errors import UserError
from cvexp.trainer import writes_step_metrics

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]

# test-time augmentations of the test step (ImageClassifier.set_tta): none, or the image and
# its horizontal flip (cvexp/runtime/settings.py spells the same names, without torch)
TTA_MODES = (None, "flip")


class ImageClassifier(L.LightningModule):
    """Cross-entropy classification of float images in [0, 1]; the net does its own preprocessing.

    `optimizer` is a factory called with `params=` (parameter groups, timm's rule: the
    optimiser's weight decay on weight matrices and conv kernels, none on biases, norm
    parameters and what the net's `no_weight_decay()` names). `scheduler` is a factory called
    with `optimizer=`, and `total_steps=` (the number of optimiser steps in the whole fit) when it
    takes that argument; it is stepped every batch.

    Fast paths: `channels_last` stores conv weights and inputs NHWC (faster convolutions on
    GPUs, with bf16 above all); `compile` compiles the net with `torch.compile` in place
    (its parameter names, hence checkpoints, do not change), in torch.compile's `compile_mode`
    (null: its default; `reduce-overhead` replays each step's kernels as CUDA graphs, which
    takes the host out of a small net's GPU step). Mixed precision is the Trainer's
    (`trainer.precision=bf16-mixed`).

    Test-time augmentation (`set_tta("flip")`, before `trainer.test`) adds `test/acc_tta` and
    `test/loss_tta` beside the plain `test/acc` and `test/loss`, which it leaves as they are.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        *,
        num_classes: int = 10,
        label_smoothing: float = 0.0,
        channels_last: bool = False,
        compile: bool = False,
        compile_mode: str | None = None,
    ) -> None:
        super().__init__()
        # plain values only: checkpoints then load with torch.load(weights_only=True)
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"], logger=False)
        self.net = prepare_net(
            net, channels_last=channels_last, compile=compile, compile_mode=compile_mode
        )
        self.channels_last = channels_last
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        # set by build_classifier and saved in checkpoints, so that a checkpoint rebuilds its net
        self.net_config: dict[str, Any] | None = None
        self.planned_schedule: dict[str, Any] | None = None  # set by configure_optimizers
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        # No argument checks per update: torchmetrics counts the distinct labels with
        # torch.unique, which waits for the GPU every step. Labels come from the DataModule,
        # and the cross-entropy already fails on one out of range.
        self.train_acc, self.val_acc, self.test_acc = (
            MulticlassAccuracy(num_classes, average="micro", validate_args=False) for _ in range(3)
        )
        # No NaN check per update either: it reads the value back (a GPU sync per step); the
        # FiniteLossGuard callback checks training losses, and a NaN val loss shows as NaN.
        # Updated with the batch's mean loss once per image (see _loss_per_image), so the
        # epoch value is the mean over images however the last batch is cut.
        self.train_loss, self.val_loss, self.test_loss = (
            MeanMetric(nan_strategy="disable") for _ in range(3)
        )
        self.test_confusion = MulticlassConfusionMatrix(num_classes, validate_args=False)
        # Test-time augmentation: a way to test, chosen by the task before trainer.test, not a
        # hyperparameter, so a checkpoint neither holds it nor needs it (and metric states are
        # not in state_dict: checkpoints are as before). None: the plain test only.
        self.tta: str | None = None
        self.test_acc_tta = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.test_loss_tta = MeanMetric(nan_strategy="disable")
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # a resumed run keeps its best so far
        # One CIFAR image: Lightning's model summary runs it through the model (eval mode, no
        # gradients) to count FLOPs and show each layer's shapes. It is an attribute, not a
        # buffer, so checkpoints do not hold it. Not for a compiled net: that forward of batch 1
        # would compile a graph of its own before training's (and FLOPs are not counted there).
        self.example_input_array = None if compile else torch.zeros(1, 3, 32, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [0, 1] -> logits (B, num_classes)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    # ------------------------------------------------------------------ steps

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        x, y = batch  # y: (B,) classes, or (B, num_classes) soft targets from Mixup/CutMix
        logits = self(x)
        loss = self.criterion(logits, y)  # cross-entropy takes class indices or soft targets
        # update only: computed and logged once per epoch; a mixed image counts as its dominant class
        self.train_acc.update(logits, dominant_label(y))
        self.train_loss.update(_loss_per_image(loss.detach(), len(y)))
        # at the logging steps only (values logged in other steps are never written), and to
        # the logger only: a step value in the progress bar is read back every step (a GPU sync)
        if self._trainer is not None and writes_step_metrics(self.trainer):
            self.log("train/loss", loss, on_step=True, on_epoch=False)
        return loss

    def on_train_epoch_end(self) -> None:
        # one log call per epoch instead of two per step; compute() syncs over ranks
        self.log("train/loss_epoch", self.train_loss.compute())
        self.log("train/acc", self.train_acc.compute(), prog_bar=True)
        self.train_loss.reset()
        self.train_acc.reset()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.val_loss.update(_loss_per_image(self.criterion(logits, y), len(y)))
        self.val_acc.update(logits, y)
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("val/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        acc = self.val_acc.compute()  # synced over ranks by torchmetrics
        if not self.trainer.sanity_checking:
            self.val_acc_best(acc)
        if self.val_acc_best.update_called:
            self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True, sync_dist=True)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.test_loss.update(_loss_per_image(self.criterion(logits, y), len(y)))
        self.test_acc.update(logits, y)
        self.test_confusion.update(logits, y)
        self.log("test/loss", self.test_loss, on_step=False, on_epoch=True)
        self.log("test/acc", self.test_acc, on_step=False, on_epoch=True)
        if self.tta == "flip":
            self._test_flipped(x, y, logits)

    def _test_flipped(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> None:
        """test/acc_tta and test/loss_tta: the mean of the logits of each image and of its
        horizontal flip, from one more forward pass of the flipped batch.

        The logits are averaged, not the softmax probabilities: airbench does so, the softmax
        of the mean logits is the renormalised geometric mean of the two views' probabilities,
        and test/loss_tta is then a cross-entropy of logits exactly as test/loss is. The two
        rules rarely disagree on the predicted class. The plain logits come from their own
        forward pass, as without tta (not from one batch of both views), so test/acc is the
        same number with or without tta.
        """
        mean_logits = (logits + self(x.flip(-1))) / 2  # (B, C, H, W): -1 is the width
        self.test_loss_tta.update(_loss_per_image(self.criterion(mean_logits, y), len(y)))
        self.test_acc_tta.update(mean_logits, y)
        self.log("test/loss_tta", self.test_loss_tta, on_step=False, on_epoch=True)
        self.log("test/acc_tta", self.test_acc_tta, on_step=False, on_epoch=True)

    def set_tta(self, mode: str | None) -> None:
        """The test-time augmentation of the next tests: None (the plain test only) or "flip"."""
        if mode not in TTA_MODES:
            raise ValueError(f"tta must be one of {TTA_MODES}, got {mode!r}")
        self.tta = mode

    def on_test_epoch_start(self) -> None:
        self.test_confusion.reset()

    def confusion_matrix(self) -> torch.Tensor:
        """(true class, predicted class) counts over the last test run, synced over ranks."""
        return self.test_confusion.compute()

    # ------------------------------------------------------------------ optimisation

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The net's own groups when it defines them (the timm wrapper, for layer-wise lr
        decay); else timm's rule (`weight_decay_groups`). Frozen parameters are left out."""
        if hasattr(self.net, "parameter_groups"):
            return self.net.parameter_groups()
        return weight_decay_groups(self.net)

    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise RuntimeError("ImageClassifier needs an optimizer factory to train.")
        optimizer = self.optimizer_factory(params=self.parameter_groups())
        for group in optimizer.param_groups:  # layer-wise lr decay, before the scheduler reads lrs
            group["lr"] *= group.get("lr_scale", 1.0)
        if self.scheduler_factory is None:
            return optimizer
        kwargs: dict[str, Any] = {"optimizer": optimizer}
        if _accepts(self.scheduler_factory, "total_steps"):  # one-cycle, warmup_cosine
            kwargs["total_steps"] = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(**kwargs)
        self.planned_schedule = copy.deepcopy(scheduler.state_dict())
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def on_train_start(self) -> None:
        """A fit resumed from a checkpoint follows the schedule planned for this fit's length.

        The rule: the schedule is re-planned as if the run had been planned for the new
        `max_epochs` from the start, and continues from the step the checkpoint reached; so
        training on to more epochs cannot overrun a one-cycle or cosine schedule, and the
        learning rate moves to the longer plan's value at that step.
        """
        configs = self.trainer.lr_scheduler_configs
        if self.trainer.ckpt_path is None or self.planned_schedule is None or len(configs) != 1:
            return
        scheduler = configs[0].scheduler
        steps_taken = scheduler.last_epoch
        scheduler.load_state_dict(
            {**self.planned_schedule, "last_epoch": steps_taken - 1, "_step_count": steps_taken}
        )
        scheduler.step()  # the planned learning rate at the step reached

    # ------------------------------------------------------------------ checkpoints

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["net_config"] = self.net_config
        # the global RNGs drive augmentation and dropout: a resumed run continues their streams
        checkpoint["rng_states"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            checkpoint["rng_states"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("rng_states") or {}
        if "torch" in states:
            torch.set_rng_state(states["torch"])
        if (
            "cuda" in states
            and torch.cuda.is_available()
            and len(states["cuda"]) == torch.cuda.device_count()
        ):
            torch.cuda.set_rng_state_all(states["cuda"])


def weight_decay_groups(net: nn.Module) -> list[dict[str, Any]]:
    """Optimiser groups by timm's rule (`timm.optim.param_groups_weight_decay`), as timm and
    DeiT train: no weight decay on biases, 1-D tensors (norms) and the parameters that the
    net's `no_weight_decay()` names (class token, position embeddings); the rest keep the
    optimiser's own `weight_decay`, the single knob. Frozen parameters are left out.

    Two groups, the decaying one first, as before this rule: a checkpoint whose groups hold
    the same parameters (VGG, the all-conv ResNet) resumes with its optimiser state.
    """
    from timm.optim import param_groups_weight_decay  # imported by a fit only: ~0.3 s

    no_decay_names = getattr(net, "no_weight_decay", set)()
    groups = param_groups_weight_decay(
        net, weight_decay=_OPTIMIZER_DEFAULT, no_weight_decay_list=no_decay_names
    )
    decay = [p for g in groups if g["weight_decay"] == _OPTIMIZER_DEFAULT for p in g["params"]]
    no_decay = [p for g in groups if g["weight_decay"] == 0.0 for p in g["params"]]
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


_OPTIMIZER_DEFAULT = -1.0  # a weight decay timm's rule passes on to the groups that decay


def _loss_per_image(mean_loss: torch.Tensor, batch_size: int) -> torch.Tensor:
    """A batch's mean loss as one value per image (a view, no copy), for MeanMetric.update.

    Not `update(loss, weight=batch_size)`: with nan_strategy="disable", torchmetrics (1.9)
    replaces the weight by ones, so a short last batch would count as much as a full one;
    and a Python weight becomes a host-to-device copy that waits for the GPU every step.
    """
    return mean_loss.expand(batch_size)


def dominant_label(targets: torch.Tensor) -> torch.Tensor:
    """The class each target mostly is: (B,) classes as they are, (B, K) soft targets by argmax."""
    return targets.argmax(dim=1) if targets.ndim == 2 else targets


def _accepts(factory: Callable[..., Any], name: str) -> bool:
    """Whether a callable (a functools.partial from Hydra) takes the keyword `name`."""
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return True
    return name in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


# torch.compile's modes (torch._inductor.list_mode_options() lists the same names)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def prepare_net(
    net: nn.Module,
    *,
    channels_last: bool = False,
    compile: bool = False,
    compile_mode: str | None = None,
) -> nn.Module:
    """Apply the speed options to a net in place: NHWC weights, and/or torch.compile."""
    if compile_mode is not None and compile_mode not in COMPILE_MODES:
        raise UserError(
            f"model.compile_mode={compile_mode} is not a torch.compile mode; pass one of "
            f"{', '.join(COMPILE_MODES)}, or null for torch's default."
        )
    if compile_mode is not None and not compile:
        raise UserError(
            f"model.compile_mode={compile_mode} needs model.compile=true; pass both, or "
            "model.compile_mode=null."
        )
    if channels_last:
        net.to(memory_format=torch.channels_last)
    if compile:
        # compiles forward in place; state_dict keys keep their names
        net.compile(mode=compile_mode)
    return net


def build_classifier(model_cfg: DictConfig) -> ImageClassifier:
    """Instantiate the classifier and its net from the `model` config group.

    The net's resolved config is kept as plain containers and saved in every checkpoint,
    so that a checkpoint can rebuild its net with no outside knowledge.
    """
    classifier: ImageClassifier = instantiate(model_cfg)
    classifier.net_config = OmegaConf.to_container(model_cfg.net, resolve=True)
    return classifier
