"""Lightning callbacks of cvexp."""

from cvexp.callbacks.finite_loss import FiniteLossGuard
from cvexp.callbacks.interrupt_checkpoint import InterruptCheckpoint
from cvexp.callbacks.learning_rate import LearningRateLogger
from cvexp.callbacks.relocatable_checkpoint import RelocatableCheckpoint
from cvexp.callbacks.run_summary import RunSummary
from cvexp.callbacks.visualization import VisualizationLogger

__all__ = [
    "FiniteLossGuard",
    "InterruptCheckpoint",
    "LearningRateLogger",
    "RelocatableCheckpoint",
    "RunSummary",
    "VisualizationLogger",
]
