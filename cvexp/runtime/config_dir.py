"""CVEXP_CONFIG_DIR: a folder of your own configs, on the config search path of every command.

    export CVEXP_CONFIG_DIR=~/cvexp-configs       # holds experiment/, model/, sweep/, local/, ...
    cvexp-train experiment=my_experiment          # ~/cvexp-configs/experiment/my_experiment.yaml

The folder is appended to the search path after cvexp's own configs (`pkg://cvexp.conf`), so
its files add options to the config groups; a file of the same name in conf/ wins. The
command-line override `hydra.searchpath=[file:///a/folder]` works beside it, since it replaces
only the primary config's list, which Hydra appends after the plugins' entries.

Why a plugin registered by hand, and neither of Hydra's other ways:
- `hydra.searchpath: ["file://${oc.env:CVEXP_CONFIG_DIR,...}"]` in the primary configs is
  replaced by any `hydra.searchpath=[...]` override (the tests' tiny model uses one), and an
  unset variable cannot be left out: its default would still be a search-path entry
  (`file://` alone is the current directory).
- A plugin module under Hydra's `hydra_plugins` namespace package is found by scanning that
  package's `__path__`, which after an editable install (setuptools' import-hook finder)
  does not include the checkout: the plugin would work after `pip install .` only.
`register_config_dir()` registers the class with Hydra's plugin registry directly, and every
command calls it (through `register_resolvers()`) before Hydra builds its search path.
"""

from __future__ import annotations

import os
from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.plugins import Plugins
from hydra.plugins.search_path_plugin import SearchPathPlugin

from cvexp.errors import UserError, exit_with_error

ENV_VAR = "CVEXP_CONFIG_DIR"
# the search-path entry of cvexp's own configs: the plugin touches only apps that use them
CVEXP_CONFIGS = "pkg://cvexp.conf"
PROVIDER = "CVEXP_CONFIG_DIR"


def config_dir_entry() -> str | None:
    """The search-path entry for CVEXP_CONFIG_DIR: `file://` and the folder's absolute path
    (a relative one is taken from the current directory); None when the variable is unset or
    empty. A path that is not a folder is refused (a command exits with one error line and
    status 2): a mistyped name would otherwise show up only as an unknown experiment."""
    value = os.environ.get(ENV_VAR, "").strip()
    if not value:
        return None
    folder = Path(value).expanduser().resolve()
    if not folder.is_dir():
        raise UserError(
            f"{ENV_VAR}={value} is not a folder: set it to the folder that holds your config "
            "groups (experiment/, model/, local/, ...), or unset it"
        )
    return f"file://{folder}"


class ConfigDirSearchPath(SearchPathPlugin):
    """Appends the folder named by CVEXP_CONFIG_DIR to the search path of cvexp's configs."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        if not any(element.path == CVEXP_CONFIGS for element in search_path.get_path()):
            return  # another Hydra app in this process
        try:
            entry = config_dir_entry()
        except UserError as error:  # Hydra calls plugins before its own error reporting starts
            exit_with_error(str(error))
        if entry is not None:
            search_path.append(provider=PROVIDER, path=entry)


def register_config_dir() -> None:
    """Register ConfigDirSearchPath with Hydra (idempotent); Hydra asks it for the search path
    each time it composes a config."""
    Plugins.instance().register(ConfigDirSearchPath)
