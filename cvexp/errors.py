"""Errors a user can fix: the one exception type, and the one way a command reports it.

A leaf module: the standard library only, so that every layer of cvexp can raise `UserError`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

# the exit status of a command refused because of its input (as argparse and Hydra use)
USAGE_ERROR = 2


class UserError(Exception):
    """A problem caused by the user's input; the message is one sentence that names the fix."""


def print_error(message: str) -> None:
    """Print `<command>: error: <message>` on stderr, as argparse and Hydra do."""
    sys.stdout.flush()
    print(f"{Path(sys.argv[0]).name}: error: {message}", file=sys.stderr)


def exit_with_error(message: str, status: int = USAGE_ERROR) -> NoReturn:
    """Print the error line and exit with `status`: how every cvexp command refuses an input."""
    print_error(message)
    sys.exit(status)


def user_error_message(error: BaseException) -> str | None:
    """The one sentence to show for an error the user can fix, or None for a genuine bug."""
    # imported here, not at the top: this leaf module stays standard-library-only when imported
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
