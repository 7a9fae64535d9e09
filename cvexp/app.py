"""What every Hydra entry point shares: the config location, resolvers and clear user errors."""

from __future__ import annotations

import functools
import hashlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from cvexp.errors import UserError

# conf/ is installed as the package cvexp.conf (see pyproject.toml), so it is found from
# any working directory, after both editable and regular installs.
CONFIG_PATH = "pkg://cvexp.conf"
VERSION_BASE = "1.3"


def fresh_dir(path: str) -> str:
    """Claim `path`, or `path-1`, `path-2`, ... if taken: runs never share a directory.

    The directory is created here (atomically, with mkdir), so two runs started in the
    same second cannot both claim it. Registered with use_cache=True, so one run resolves
    it once; Hydra copies that cache into every job of a sweep, so all jobs agree on it.
    """
    candidate, n = path, 0
    while True:
        try:
            os.makedirs(candidate, exist_ok=False)
            return candidate
        except FileExistsError:
            n += 1
            candidate = f"{path}-{n}"


def path_safe(text: str, max_length: int = 120) -> str:
    """`text` usable as one directory name.

    Characters other than letters, digits and '._-+' become '_' (so '/', '=' and ',', which
    Hydra's override grammar or the file system would trip over, never appear); a name longer than `max_length` is cut
    and ends with a hash of the whole, so it stays unique and under the file-system limit.
    """
    safe = "".join(c if c.isalnum() or c in "._-+" else "_" for c in str(text)) or "default"
    if len(safe) > max_length:
        safe = f"{safe[: max_length - 9]}-{hashlib.sha1(safe.encode()).hexdigest()[:8]}"
    return safe


def register_resolvers() -> None:
    """Register cvexp's OmegaConf resolvers (idempotent)."""
    OmegaConf.register_new_resolver("fresh_dir", fresh_dir, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("path_safe", path_safe, replace=True)


def in_multirun() -> bool:
    """Whether this process runs a job of a Hydra sweep (-m)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def user_error_message(error: BaseException) -> str | None:
    """The one sentence to show for an error the user can fix, or None for a genuine bug."""
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


def compose_config(config_name: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose one of cvexp's configs outside a Hydra app (benchmarks, tests), as the app would.

    `${hydra:...}` interpolations resolve against the composed Hydra config, and the run's
    directory is `output_dir`.
    """
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="cvexp.conf", version_base=VERSION_BASE):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg
