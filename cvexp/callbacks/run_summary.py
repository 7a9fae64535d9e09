"""RunSummary: collect what a run did and write `summary.json`, on success and on failure."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, Timer
from lightning.pytorch.utilities import rank_zero_only

from cvexp.errors import UserError, user_error_message
from cvexp.loggers.run_hparams import (
    finish_wandb_runs,
    log_hparams,
    log_run_hparams,
    record_tracking_run_ids,
)
from cvexp.provenance import device_name, environment_versions, git_commit
from cvexp.run_record import FINISHED, SCHEMA_VERSION, TRAIN_SECONDS, RunDir


class RunSummary(Callback):
    """Keeps the run's record in `summary.json`, driven by Lightning's hooks (rank 0 writes).

    - `setup`: the net's size and the validation split;
    - `on_train_batch_end`: counts the training images (all ranks), for `train_images_per_s`,
      the images per second of training steps (validation not counted);
    - `on_validation_end`: the best epoch so far of `monitor`;
    - `on_validation_epoch_end`: logs `time/train_seconds` (`TRAIN_SECONDS`), the seconds of fit
      so far across resumes less the time spent validating (the sanity check included), at
      the step val/acc is logged at: the x axis of `cvexp-compare --x time`;
    - each validation's end (train/* metrics: the next epoch's start and the end of fit), and
      the test: the best value of `optimized`, the metric a sweep optimises (any logged metric);
    - `on_fit_end`: completed or stopped early, the best and last checkpoints (from the
      `ModelCheckpoint`), epochs run and training time;
    - `on_test_end`: the test metrics and the checkpoint they came from;
    - `on_exception`: failed (with the one-sentence error) or interrupted.

    `record_failure` covers errors raised before the Trainer runs. Its state (best epoch,
    seconds of fit and of validation, training images) is saved in checkpoints, so a resumed
    run continues the record (a checkpoint from before images were counted gives no rate). A
    result once recorded is never lost: when an attempt to continue a finished run fails or is
    interrupted, summary.json keeps the earlier result and lists the attempt under
    `attempts`. With `hparams`, TensorBoard's HPARAMS tab gets them with the final best val/acc
    and test/acc; CSV (hparams.yaml), MLflow (params) and W&B (config) get them when the fit
    starts.
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        fields: dict[str, Any] | None = None,
        hparams: dict[str, Any] | None = None,
        test_after_fit: bool = True,
        monitor: str = "val/acc",
        mode: str = "max",
        optimized: tuple[str, str] = ("val/acc", "max"),
    ) -> None:
        self.run = RunDir(run_dir)
        self.previous = self.run.read_summary()  # the run's record before this attempt, if resumed
        self.record: dict[str, Any] = {
            "status": "failed",
            "params": None,
            "test_acc": None,
            "test_acc_tta": None,  # the test with test-time augmentation (tta=flip), if any
            "best_model_path": None,
            "last_model_path": None,
            "epochs_run": 0,
            "split": {},
            **(fields or {}),
        }
        self.hparams, self.test_after_fit = hparams, test_after_fit
        self.monitor, self.mode = monitor, mode
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self.optimized_name, self.optimized_mode = optimized
        self.optimized_best: float | None = None
        self.optimized_epoch: int | None = None
        self._first_epoch: int | None = None  # the epoch this process started the fit at
        self.train_seconds = 0.0  # of the fit, validation included (summary.json)
        self.validation_seconds = 0.0  # of train_seconds: validating, sanity check included
        # images of the training steps, all ranks (None: resumed from a checkpoint without it)
        self.train_images: int | None = 0
        self._fit_started: float | None = None
        self._validation_started: float | None = None

    # ------------------------------------------------------------------ Lightning hooks

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        net = getattr(pl_module, "net", pl_module)
        self.record["params"] = sum(p.numel() for p in net.parameters())
        self.record["trainable_params"] = sum(
            p.numel() for p in net.parameters() if p.requires_grad
        )
        split_record = getattr(trainer.datamodule, "split_record", None)
        if callable(split_record):
            self.record["split"] = split_record()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_started = time.perf_counter()
        # the precision the Trainer really used (the config may name a resolver, e.g. the CPU
        # presets' ${fast_precision:...}, which picks one for the machine)
        self.record["precision"] = str(trainer.precision)
        if trainer.is_global_zero:
            record_tracking_run_ids(trainer, self.run)
        if self.hparams is not None and trainer.is_global_zero:
            log_run_hparams(trainer, self.hparams)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._first_epoch is None:
            self._first_epoch = trainer.current_epoch
        elif trainer.current_epoch > self._first_epoch and self._optimizes_training_metric:
            self._observe_optimized(trainer, trainer.current_epoch - 1)  # the epoch just ended

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self.train_images is not None:
            labels = batch[1] if isinstance(batch, (tuple, list)) else batch
            self.train_images += len(labels) * trainer.world_size

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._fit_started is not None:
            self._validation_started = time.perf_counter()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self._fit_started is None:
            return
        fit, validating = self._seconds()
        # once per validation, never per step; every rank logs (max: the slowest rank's time)
        pl_module.log(
            TRAIN_SECONDS,
            fit - validating,
            on_step=False,
            on_epoch=True,
            sync_dist=True,
            reduce_fx="max",
        )

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop_validation_clock()
        if trainer.sanity_checking:
            return
        # before the epoch's checkpoints are saved (Lightning runs checkpoint callbacks last),
        # so a resumed run keeps this epoch's value; only after a validation really ran, so
        # trainer.check_val_every_n_epoch=2 is no reason to call a val metric missing
        if not self._optimizes_training_metric and not self.optimized_name.startswith("test/"):
            self._observe_optimized(trainer, trainer.current_epoch)
        if self.monitor not in trainer.callback_metrics:
            return
        score = float(trainer.callback_metrics[self.monitor])
        better = self.best_score is None or (
            score > self.best_score if self.mode == "max" else score < self.best_score
        )
        if better:
            self.best_score, self.best_epoch = score, trainer.current_epoch

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop_clock()
        if (
            self._optimizes_training_metric
            and self._first_epoch is not None
            and trainer.current_epoch > self._first_epoch
        ):
            self._observe_optimized(trainer, trainer.current_epoch - 1)
        stopping = trainer.early_stopping_callback
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        if stopping is not None and stopping.stopped_epoch > 0:
            self.record["status"] = "stopped_early"
        elif (
            timer is not None and timer.time_remaining() is not None and timer.time_remaining() <= 0
        ):
            self.record["status"] = "time_limit"
        else:
            self.record["status"] = "completed"
        self._record_fit(trainer)
        self.write(trainer, final=not self.test_after_fit)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        self.record["test_acc"] = _number(metrics.get("test/acc"))
        self.record["test_loss"] = _number(metrics.get("test/loss"))
        self.record["test_acc_tta"] = _number(metrics.get("test/acc_tta"))
        if "test/loss_tta" in metrics:
            self.record["test_loss_tta"] = _number(metrics["test/loss_tta"])
        if self.optimized_name.startswith("test/"):
            self._observe_optimized(trainer, None)
        self.record["tested_checkpoint"] = (
            trainer.ckpt_path or "the last weights (no best checkpoint was saved)"
        )
        self.write(trainer, final=True)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._stop_clock()
        if trainer.state.fn == "fit":
            self._record_fit(trainer)
        self._record_error(exception)
        self.write(trainer, final=True)

    def state_dict(self) -> dict[str, Any]:
        seconds, validating = self._seconds()
        return {
            "run_dir": str(self.run.path.resolve()),
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "train_seconds": seconds,
            "validation_seconds": validating,
            "train_images": self.train_images,
            "optimized": [self.optimized_name, self.optimized_best, self.optimized_epoch],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved_in = state_dict.get("run_dir")
        if saved_in and not self._same_run(Path(saved_in)):
            return  # ckpt_path= from another run starts a new run: its best is not this run's
        self.best_score = state_dict.get("best_score")
        self.best_epoch = state_dict.get("best_epoch")
        name, best, epoch = state_dict.get("optimized") or (None, None, None)
        # a resumed fit continues the record; the test of the best checkpoint after this
        # process's fit (which loads the state saved then) keeps what the fit found, its
        # seconds included; and another metric's best means nothing for this one
        if self._first_epoch is None:
            self.train_seconds = float(state_dict.get("train_seconds", 0.0))
            # 0 in a checkpoint saved before it was kept: that run's earlier validations count
            self.validation_seconds = float(state_dict.get("validation_seconds", 0.0))
            # a checkpoint saved before images were counted: the rate would be wrong, so none
            self.train_images = state_dict.get("train_images")
        if self._first_epoch is None and name == self.optimized_name:
            self.optimized_best, self.optimized_epoch = best, epoch

    def _same_run(self, saved_in: Path) -> bool:
        """Whether a checkpoint's state was saved by this run (in this folder, or in the folder
        this run was moved from, which no longer exists)."""
        return saved_in == self.run.path.resolve() or not saved_in.exists()

    # ------------------------------------------------------------------ the optimised metric

    @property
    def _optimizes_training_metric(self) -> bool:
        """train/* metrics are logged at the epoch's end, after this callback's epoch-end hook,
        so they are read at the next epoch's start (and at the end of fit)."""
        return self.optimized_name.startswith("train/")

    def _observe_optimized(self, trainer: L.Trainer, epoch: int | None) -> None:
        """Keep the best value of the optimised metric; refuse a metric the run never logs."""
        metrics = trainer.callback_metrics
        if self.optimized_name not in metrics:
            if self.optimized_name.startswith("test/"):
                return  # logged by the test, after the fit
            raise UserError(
                f"optimized_metric={self.optimized_name} is not logged by this run; pass one of: "
                f"{', '.join(sorted(metrics))}."
            )
        value = float(metrics[self.optimized_name])
        best = self.optimized_best
        if best is None or (value > best if self.optimized_mode == "max" else value < best):
            self.optimized_best, self.optimized_epoch = value, epoch

    # ------------------------------------------------------------------ the record

    def record_failure(self, exception: BaseException) -> None:
        """Write the summary of a run that failed before (or outside) the Trainer's hooks."""
        if self.record.get("error") is None and self.record["status"] not in ("interrupted",):
            self._record_error(exception)
        self.write(None, final=False)

    def _record_error(self, exception: BaseException) -> None:
        if isinstance(exception, (KeyboardInterrupt, SystemExit)):  # SIGTERMException included
            self.record["status"] = "interrupted"
            return
        self.record["status"] = "failed"
        self.record["error"] = (
            user_error_message(exception) or f"{type(exception).__name__}: {exception}"
        )

    def _record_fit(self, trainer: L.Trainer) -> None:
        checkpointing = trainer.checkpoint_callback
        if checkpointing is not None:
            self.record["best_model_path"] = checkpointing.best_model_path or None
            self.record["last_model_path"] = checkpointing.last_model_path or None
        self.record["epochs_run"] = trainer.current_epoch

    def _seconds(self) -> tuple[float, float]:
        """The seconds of fit so far (across resumes) and, of them, the seconds validating."""
        now = time.perf_counter()
        fit, validating = self.train_seconds, self.validation_seconds
        if self._fit_started is not None:
            fit += now - self._fit_started
        if self._validation_started is not None:
            validating += now - self._validation_started
        return fit, validating

    def _stop_validation_clock(self) -> None:
        if self._validation_started is not None:
            self.validation_seconds += time.perf_counter() - self._validation_started
            self._validation_started = None

    def _stop_clock(self) -> None:
        self._stop_validation_clock()
        if self._fit_started is not None:
            self.train_seconds += time.perf_counter() - self._fit_started
            self._fit_started = None

    def _throughput(self) -> dict[str, Any]:
        """The training images and their rate per second of training steps (validation not
        counted), when both are known."""
        stepping = self.train_seconds - self.validation_seconds
        if not self.train_images or stepping <= 0:
            return {}
        return {
            "train_images": self.train_images,
            "train_images_per_s": round(self.train_images / stepping, 1),
        }

    @property
    def summary(self) -> dict[str, Any]:
        """The record with what this callback tracked, the environment and earlier attempts."""
        attempts = list(self.previous.get("attempts", [])) if self.previous else []
        if (
            self.previous
            and self.previous.get("status") in FINISHED
            and self.record["status"] not in FINISHED
        ):
            attempt = {
                "status": self.record["status"],
                "error": self.record.get("error"),
                "overrides": self.record.get("overrides"),
                "epochs_run": self.record.get("epochs_run"),
                "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            return {**self.previous, "attempts": [*attempts, attempt]}
        return {
            "schema_version": SCHEMA_VERSION,
            **({"attempts": attempts} if attempts else {}),
            "best_val_acc": self.best_score,
            "best_epoch": self.best_epoch,
            "train_seconds": round(self.train_seconds, 3),
            **self._throughput(),
            "optimized_metric": {
                "name": self.optimized_name,
                "mode": self.optimized_mode,
                "best": self.optimized_best,
                "epoch": self.optimized_epoch,
            },
            **self.record,
            "versions": environment_versions(),
            "device": device_name(),
            "git_commit": git_commit(),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def write(self, trainer: L.Trainer | None, *, final: bool) -> None:
        """Write summary.json atomically (rank 0); when `final`, fill the HPARAMS tab too."""
        if rank_zero_only.rank != 0:
            return
        summary = self.summary
        self.run.write_summary(summary)
        if final and trainer is not None and self.hparams is not None:
            log_hparams(trainer, self.hparams, summary)
        if final and trainer is not None:
            finish_wandb_runs(trainer, failed=summary.get("status") not in FINISHED)


def _number(value: Any) -> float | None:
    return None if value is None else float(value)
