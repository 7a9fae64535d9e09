"""cvexp's configs: the OmegaConf resolvers they use, and composing one outside a Hydra app."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from cvexp.loggers.config_values import absolute_path, logger_run_id, run_label, tag_dict
from cvexp.runtime.config_dir import register_config_dir
from cvexp.runtime.hydra_app import (
    VERSION_BASE,
    checkpoint_name,
    default_data_root,
    fast_precision,
    path_safe,
)
from cvexp.runtime.key_help import resolve_key_help
from cvexp.runtime.optuna_study import trial_number
from cvexp.runtime.run_dir import job_dirname, record_subdir


def register_resolvers() -> None:
    """Register cvexp's OmegaConf resolvers (idempotent; none has side effects), and the search
    path plugin that adds the folder named by CVEXP_CONFIG_DIR (runtime/config_dir.py)."""
    register_config_dir()
    OmegaConf.register_new_resolver("path_safe", path_safe, replace=True)
    OmegaConf.register_new_resolver("job_dirname", job_dirname, replace=True)
    OmegaConf.register_new_resolver("data_root", default_data_root, replace=True)
    OmegaConf.register_new_resolver("checkpoint_name", checkpoint_name, replace=True)
    OmegaConf.register_new_resolver("fast_precision", fast_precision, replace=True)
    register_logger_resolvers()
    OmegaConf.register_new_resolver("key_help", resolve_key_help, replace=True)


def register_logger_resolvers() -> None:
    """The resolvers of conf/logger/ and conf/hydra/: store paths, run names, tags, the record."""
    OmegaConf.register_new_resolver("abspath", absolute_path, replace=True)
    OmegaConf.register_new_resolver("run_label", run_label, replace=True)
    OmegaConf.register_new_resolver("mlflow_tags", tag_dict, replace=True)
    OmegaConf.register_new_resolver("logger_run_id", logger_run_id, replace=True)
    OmegaConf.register_new_resolver("record_subdir", record_subdir, replace=True)
    OmegaConf.register_new_resolver("trial_number", trial_number, replace=True)


def compose_config(config_name: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose one of cvexp's configs outside a Hydra app (benchmarks, tests), as the app would.

    `${hydra:...}` interpolations resolve against the composed Hydra config, and the run's
    directory is `output_dir`.
    """
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="cvexp.conf", version_base=VERSION_BASE):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg
