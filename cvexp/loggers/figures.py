"""Figures and their scalars, to every logger of a run that can hold images.

TensorBoard gets them as images (its slider runs over epochs), MLflow as artifacts
(`<tag>/epochNNN.png` in the run's artifact store) and W&B as media. A CSVLogger holds numbers
only, so a run that logs only to CSV draws no figures at all.
"""

from __future__ import annotations

import io

from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from matplotlib.figure import Figure
from PIL import Image

FIGURE_LOGGERS = (TensorBoardLogger, MLFlowLogger, WandbLogger)


def figure_loggers(loggers: list[Logger]) -> list[Logger]:
    """The loggers among `loggers` that can hold a figure."""
    return [logger for logger in loggers if isinstance(logger, FIGURE_LOGGERS)]


def log_figure(
    loggers: list[Logger], tag: str, figure: Figure, *, epoch: int, global_step: int
) -> None:
    """Log `figure` under `tag` to each of `loggers` (the caller closes it)."""
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_figure(tag, figure, epoch, close=False)
        elif isinstance(logger, MLFlowLogger):
            logger.experiment.log_figure(logger.run_id, figure, f"{tag}/epoch{epoch:03d}.png")
        elif isinstance(logger, WandbLogger):
            logger.log_image(tag, [png_image(figure)], step=global_step, caption=[f"epoch {epoch}"])


def log_scalar(
    loggers: list[Logger], tag: str, value: float, *, epoch: int, global_step: int
) -> None:
    """A scalar that belongs with the figures (TensorBoard: at the figures' epoch)."""
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_scalar(tag, value, epoch)
        else:
            logger.log_metrics({tag: value}, step=global_step)


def png_image(figure: Figure) -> Image.Image:
    """The figure rendered as a PNG, as a PIL image."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    buffer.seek(0)
    with Image.open(buffer) as image:
        return image.convert("RGB")
