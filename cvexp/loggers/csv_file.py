"""CSVLogger that continues an existing metrics.csv instead of deleting it (resumed runs)."""

from __future__ import annotations

import csv

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class KeepingExperimentWriter(ExperimentWriter):
    """Lightning's writer deletes an existing metrics.csv when it starts; this one appends to it.

    The header of the earlier file becomes the starting set of columns, so new rows go below the
    earlier ones (and a new column rewrites the file with the earlier rows kept).
    """

    def _check_log_dir_exists(self) -> None:
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            header = next(csv.reader(file), [])
        self.metrics_keys = sorted(header)


class CSVLogger(LightningCSVLogger):
    """Lightning's CSVLogger (metrics.csv, hparams.yaml) whose metrics.csv survives a resume."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = KeepingExperimentWriter(log_dir=self.log_dir)
        return self._experiment
