"""--help's main keys: every key a command's help names exists, and its comment is read from conf/."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from cvexp.runtime.config import register_resolvers
from cvexp.runtime.hydra_app import VERSION_BASE
from cvexp.runtime.key_help import (
    CONF_DIR,
    default_text,
    first_sentence,
    key_descriptions,
    main_keys_text,
    yaml_key_comments,
)

COMMANDS = ["train", "eval", "visualize", "predict", "export", "attention"]
_MISSING = object()


def compose_with_hydra(config_name: str, overrides: list[str] | None = None):
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="cvexp.conf", version_base=VERSION_BASE):
        return compose(config_name, overrides=overrides or [], return_hydra_config=True)


def help_keys(cfg) -> tuple[str, list[str]]:
    """The (config name, keys) the help template passes to the key_help resolver."""
    template = cfg.hydra.help._get_node("template")._value()  # unresolved
    match = re.search(r"\$\{key_help:([^}]*)\}", template)
    assert match, "the help template does not list main keys"
    config_name, *keys = match[1].split(",")
    return config_name, keys


@pytest.mark.parametrize("command", COMMANDS)
def test_every_key_the_help_names_exists_and_is_explained(command: str) -> None:
    cfg = compose_with_hydra(command)
    config_name, keys = help_keys(cfg)
    assert config_name == command
    assert len(keys) >= 5
    descriptions = key_descriptions(command, dict(cfg.hydra.runtime.choices))
    for key in keys:
        assert OmegaConf.select(cfg, key, default=_MISSING) is not _MISSING, key
        assert descriptions.get(key), f"{key} has no comment above it in conf/"
    text = main_keys_text(cfg, keys, command)
    assert text.count(" (default: ") == len(keys)
    GlobalHydra.instance().clear()


def test_the_help_follows_the_chosen_options() -> None:
    cfg = compose_with_hydra("train", ["model=vit", "trainer.max_epochs=7"])
    _, keys = help_keys(cfg)
    text = main_keys_text(cfg, keys, "train")
    assert "model.optimizer.lr (default: 0.001)" in text  # the ViT's AdamW, not VGG's SGD
    # true for the ViT too, whose schedule has no max_lr (it once said max_lr follows lr)
    lr_help = text.split("model.optimizer.lr (default: 0.001)")[1].split("model.")[0]
    assert "warmup_cosine multiplies it" in " ".join(lr_help.split())
    assert "trainer.max_epochs (default: 7)" in text
    assert "data.root (default: ${data_root:})" in text  # an interpolation as written
    GlobalHydra.instance().clear()


@pytest.mark.parametrize(
    "experiment", sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
)
def test_the_help_of_every_experiment_composes(experiment: str) -> None:
    # presets switch groups off (callbacks.early_stopping=null): their keys say so
    cfg = compose_with_hydra("train", [f"experiment={experiment}"])
    _, keys = help_keys(cfg)
    text = main_keys_text(cfg, keys, "train")
    assert text.count(" (default: ") == len(keys)
    if cfg.callbacks.get("early_stopping") is None:
        assert (
            "callbacks.early_stopping.patience (default: none: callbacks.early_stopping is off"
            in text
        )
    GlobalHydra.instance().clear()


def test_comments_are_read_per_dotted_key(tmp_path: Path) -> None:
    path = tmp_path / "group.yaml"
    path.write_text(
        "# A file header, detached by the blank line below.\n"
        "\n"
        "defaults:\n"
        "  - base\n"
        "  - _self_\n"
        "# the learning rate\n"
        "lr: 0.1\n"
        "undocumented: 1\n"
        "net:\n"
        "  # channels of the first layer\n"
        "  width: 64\n"
        "  layers:\n"
        "    - 1\n"
        "  # two comment lines\n"
        "  # joined into one\n"
        "  depth: 16\n"
    )
    comments = yaml_key_comments(path, "model.")
    assert comments == {
        "model.lr": "the learning rate",
        "model.net.width": "channels of the first layer",
        "model.net.depth": "two comment lines joined into one",
    }


def test_one_sentence_and_values_in_yaml_spelling() -> None:
    assert first_sentence("stop after this, e.g. 00:02. The rest.") == "stop after this, e.g. 00:02"
    cfg = OmegaConf.create({"a": True, "b": None, "c": 0, "d": "${c}", "e": {"f": 1}})
    assert [default_text(cfg, k) for k in "abcd"] == ["true", "null", "0", "${c}"]
    assert default_text(cfg, "e.f") == "1"
