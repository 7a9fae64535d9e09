"""Lightning callbacks of cvexp."""

from cvexp.callbacks.learning_rate import LearningRateLogger
from cvexp.callbacks.run_summary import RunSummary

__all__ = ["LearningRateLogger", "RunSummary"]
