"""InterruptCheckpoint: on SIGTERM, Ctrl+C or a preemption notice, save last.ckpt before the run exits."""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
from types import FrameType

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from cvexp.outside_launch import slurm_job_id

log = logging.getLogger(__name__)


class InterruptCheckpoint(Callback):
    """Writes `last.ckpt` (atomically, through the trainer's checkpoint IO) when a fit is interrupted.

    Lightning turns SIGTERM into SIGTERMException at the next batch, on every rank at once,
    and Ctrl+C into KeyboardInterrupt; both reach `on_exception`. `resume=RUN_DIR` continues
    from it; a run stopped mid-epoch trains that epoch's remaining batches (from a fresh shuffle).

    The preemption notice (SIGUSR1, or the `requeue_signal` of Lightning's SLURMEnvironment;
    what SLURM sends before it preempts a job or its time runs out) stops the fit the same
    way. Under SLURM with Lightning's `auto_requeue` (the default there), rank 0 then asks
    for the job to be requeued (`scontrol requeue <job id>`), after last.ckpt is written, in
    place of Lightning's own handler, which would save a separate `hpc_ckpt_N.ckpt` from
    inside the signal handler and keep training. The requeued job continues this run.
    """

    def __init__(self) -> None:
        self.preempted = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning has registered its signal handlers by now; its teardown restores the originals
        if threading.current_thread() is threading.main_thread():
            signal.signal(preemption_signal(trainer), self._on_preemption_notice)

    def _on_preemption_notice(self, signum: int, frame: FrameType | None) -> None:
        log.info("Received the preemption signal %s: saving last.ckpt and stopping", signum)
        self.preempted = True
        # Lightning's own SIGTERM path: every rank stops at the next batch boundary
        handler = signal.getsignal(signal.SIGTERM)
        if callable(handler):
            handler(signal.SIGTERM, frame)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if (
            not isinstance(exception, (SIGTERMException, KeyboardInterrupt))
            or trainer.state.fn != "fit"
        ):
            return
        checkpointing = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
        if checkpointing is not None and checkpointing.dirpath is not None and trainer.global_step:
            last = checkpointing.format_checkpoint_name({}, checkpointing.CHECKPOINT_NAME_LAST)
            # recorded as the checkpointing's own last file before it is saved (the state goes
            # into the file), so that a resumed fit overwrites it instead of adding last-v1.ckpt
            checkpointing.last_model_path = last
            trainer.save_checkpoint(last)
        if self.preempted and requeues(trainer) and trainer.is_global_zero:
            request_requeue()


def cluster_environment(trainer: L.Trainer) -> object:
    """The cluster environment the Trainer detected (the one Lightning's signal handling reads)."""
    return getattr(getattr(trainer, "_accelerator_connector", None), "cluster_environment", None)


def preemption_signal(trainer: L.Trainer) -> signal.Signals:
    """SLURMEnvironment's `requeue_signal` under SLURM, else SIGUSR1."""
    environment = cluster_environment(trainer)
    if isinstance(environment, SLURMEnvironment) and environment.requeue_signal is not None:
        return environment.requeue_signal
    return signal.SIGUSR1


def requeues(trainer: L.Trainer) -> bool:
    """Whether Lightning's SLURM environment is set to requeue the job (`auto_requeue`)."""
    environment = cluster_environment(trainer)
    return isinstance(environment, SLURMEnvironment) and environment.auto_requeue


def request_requeue() -> None:
    """`scontrol requeue <this job>`, as Lightning's SLURM handler does; a failure is logged."""
    job = slurm_job_id()
    if job is None:
        return
    try:
        result = subprocess.run(["scontrol", "requeue", job], check=False, timeout=60).returncode
    except (OSError, subprocess.SubprocessError) as error:
        log.warning("Could not requeue SLURM job %s: %s", job, error)
        return
    if result == 0:
        log.info("Requeued SLURM job %s", job)
    else:
        log.warning("Requeuing SLURM job %s failed with exit status %s", job, result)
