"""A command's answer to an error the user can fix: one sentence on stderr and exit status 2."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

from cvexp.errors import exit_with_error, print_error, user_error_message
from cvexp.runtime.hydra_app import in_multirun


def exit_on_user_error(task: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a UserError (or a config error) into one line on stderr and exit status 2.

    In a sweep the other jobs still run; SweepReport exits non-zero at the end instead.
    HYDRA_FULL_ERROR=1 keeps the full traceback, for debugging.
    """

    @functools.wraps(task)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return task(*args, **kwargs)
        except Exception as error:
            message = user_error_message(error)
            if message is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            if in_multirun():  # let the sweep go on; the job's summary.json says it failed
                print_error(message)
                return float("nan")  # no metric: a sweeper such as Optuna marks the trial failed
            exit_with_error(message)

    return wrapper
