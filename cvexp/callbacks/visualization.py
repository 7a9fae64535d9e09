"""VisualizationLogger: filters, feature maps or attention, and predictions, in the loggers during training."""

from __future__ import annotations

import time
from contextlib import suppress

import lightning as L
import matplotlib.pyplot as plt
import torch
from lightning.pytorch.callbacks import Callback

from cvexp.data.formats import CLASSES
from cvexp.errors import UserError
from cvexp.loggers.figures import figure_loggers, log_figure, log_scalar
from cvexp.viz.figures import predictions_figure
from cvexp.viz.network import network_figures


class VisualizationLogger(Callback):
    """Every `every_n_epochs` epochs and at the end of fit, log figures of fixed validation images.

    Tags: `viz/predictions` (the labelled grid), and from `network_figures` for the first
    image: `viz/filters` (first conv layer), `viz/overview` (the image through every layer)
    and `viz/attention` (a ViT's class-token attention of the last block, or local attention). The images are drawn from the
    held-out split with `seed` and stay the same in every epoch, so the TensorBoard slider
    shows their progression. `viz/seconds` records what the callback cost. The figures go to
    TensorBoard, MLflow (as artifacts) and W&B; a run with none of these draws nothing.
    """

    def __init__(self, every_n_epochs: int = 5, num_images: int = 16, seed: int = 0) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be at least 1, got {every_n_epochs}.")
        self.every_n_epochs, self.num_images, self.seed = every_n_epochs, num_images, seed
        self._images: torch.Tensor | None = None
        self._labels: torch.Tensor | None = None

    def _fixed_batch(self, trainer: L.Trainer) -> tuple[torch.Tensor, torch.Tensor] | None:
        datamodule = trainer.datamodule
        if self._images is None and getattr(datamodule, "val_indices", None) is not None:
            generator = torch.Generator().manual_seed(self.seed)
            val = datamodule.val_indices
            chosen = val[torch.randperm(len(val), generator=generator)[: self.num_images]]
            self._images = datamodule.data.train_images[chosen].permute(0, 3, 1, 2).float() / 255
            self._labels = datamodule.data.train_labels[chosen]
        return None if self._images is None else (self._images, self._labels)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        last = trainer.current_epoch + 1 >= (trainer.max_epochs or 0)
        if trainer.sanity_checking or not (
            last or (trainer.current_epoch + 1) % self.every_n_epochs == 0
        ):
            return
        self.log_figures(trainer, pl_module)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch % self.every_n_epochs:  # stopped early between two logging epochs
            self.log_figures(trainer, pl_module)

    @torch.no_grad()
    def log_figures(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Draw every figure for the current epoch and log it to each logger that holds images
        (rank 0 only; nothing is drawn when no logger can hold a figure, e.g. CSV only)."""
        loggers = figure_loggers(trainer.loggers)
        batch = self._fixed_batch(trainer)
        if not trainer.is_global_zero or not loggers or batch is None:
            return
        start = time.perf_counter()
        where = {"epoch": trainer.current_epoch, "global_step": trainer.global_step}
        step = trainer.current_epoch
        net = pl_module.net
        was_training = net.training
        net.eval()
        images = batch[0].to(pl_module.device)
        probabilities = pl_module(images).softmax(dim=1).float().cpu()
        title = f"epoch {step}: validation images (green: right, red: wrong)"
        figures = {
            "predictions": predictions_figure(
                batch[0], probabilities, batch[1], CLASSES, title=title
            )
        }
        with suppress(UserError):  # a timm model that does not expose its layers: predictions only
            figures.update(
                network_figures(net, batch[0][0], caption=f"epoch {step}", every_layer=False)
            )
        for name, fig in figures.items():
            log_figure(loggers, f"viz/{name}", fig, **where)
            plt.close(fig)
        net.train(was_training)
        log_scalar(loggers, "viz/seconds", time.perf_counter() - start, **where)
