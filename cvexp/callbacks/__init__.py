"""Lightning callbacks of cvexp."""

from cvexp.callbacks.run_summary import RunSummary

__all__ = ["RunSummary"]
