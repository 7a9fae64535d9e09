"""Errors a user can fix: the one exception type, its one-sentence message, and the exit status 2."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


class UserError(Exception):
    """A problem caused by the user's input; the message is one sentence that names the fix."""


def user_error_message(error: BaseException) -> str | None:
    """The one sentence to show for an error the user can fix, or None for a genuine bug."""
    from hydra.errors import InstantiationException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(error, UserError):
        return str(error)
    if isinstance(error, InstantiationException):
        cause = error.__cause__
        if isinstance(cause, UserError):
            return str(cause)
        detail = str(cause or error).strip().splitlines()[-1]
        return f"The config could not be built ({detail}); check the overrides on the command line."
    if isinstance(error, OmegaConfBaseException):
        detail = str(error).strip().splitlines()[0]
        return f"The config is invalid ({detail}); check the overrides on the command line."
    return None


def exit_on_user_error(task: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a UserError (or a config error) into one line on stderr and exit status 2.

    In a sweep the other jobs still run; SweepReport exits non-zero at the end instead.
    HYDRA_FULL_ERROR=1 keeps the full traceback, for debugging.
    """

    @functools.wraps(task)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from cvexp.runtime.hydra_app import in_multirun

        try:
            return task(*args, **kwargs)
        except Exception as error:
            message = user_error_message(error)
            if message is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"{Path(sys.argv[0]).name}: error: {message}", file=sys.stderr)
            if in_multirun():  # let the sweep go on; the job's summary.json says it failed
                return float("nan")  # no metric: a sweeper such as Optuna marks the trial failed
            sys.exit(2)

    return wrapper
