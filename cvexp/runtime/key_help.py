"""`--help`'s list of main keys: each key's description is the comment above it in conf/.

The configs' own comments are the documentation; this module reads them back, so the help
cannot drift from the files. A command's help template names its main keys through the
`key_help` resolver, e.g. `${key_help:seed,data.batch_size}`, and the resolver prints one
line per key: the key, its default in the composed config, and the first sentence of its
comment. The file a key is read from is the one the composed config chose (the model,
data, trainer, ... option of this command line), so `cvexp-train model=vit --help` describes
the ViT's keys.
"""

from __future__ import annotations

import re
import textwrap
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

# conf/ is installed as the package cvexp.conf (see pyproject.toml)
CONF_DIR = Path(str(resources.files("cvexp.conf")))

_KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w-]*):(?:\s|$)")
_PACKAGE = re.compile(r"^#\s*@package\s+(?P<package>\S+)")
_DEFAULT_ENTRY = re.compile(r"^\s*-\s*(?P<name>[\w./-]+)(?P<here>@_here_)?\s*$")


def yaml_key_comments(path: Path, prefix: str = "") -> dict[str, str]:
    """Dotted key -> the comment block written right above it in one YAML file.

    A blank line between a comment and the next key detaches the comment (a file's header).
    """
    comments: dict[str, str] = {}
    pending: list[str] = []  # comment lines read since the last key
    stack: list[tuple[int, str]] = []  # (indentation, key) of the enclosing mappings
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped:
            pending = []
            continue
        if stripped.startswith("#"):
            if not _PACKAGE.match(stripped):
                pending.append(stripped.lstrip("#").strip())
            continue
        match = _KEY_LINE.match(line)
        if match is None:  # a list item or a continued value
            pending = []
            continue
        indent, key = len(match["indent"]), match["key"]
        while stack and stack[-1][0] >= indent:
            stack.pop()
        dotted = ".".join([*(k for _, k in stack), key])
        if pending:
            comments[f"{prefix}{dotted}"] = " ".join(pending)
        pending = []
        stack.append((indent, key))
    return comments


def first_sentence(comment: str) -> str:
    """The comment up to its first sentence end ("e.g." and "i.e." do not end one)."""
    sentence = re.split(r"(?<!\be\.g)(?<!\bi\.e)\. ", comment, maxsplit=1)[0]
    return sentence.rstrip(".")


def config_files(config_name: str, choices: dict[str, Any]) -> list[tuple[Path, str]]:
    """(file, key prefix) of the primary config, common.yaml and each chosen group option,
    bases first, so a more specific file's comment wins."""
    files: list[tuple[Path, str]] = [(CONF_DIR / "common.yaml", "")]
    files.append((CONF_DIR / f"{config_name}.yaml", ""))
    for group, option in choices.items():
        if group.startswith("hydra") or option is None:
            continue
        files.extend(_group_option_files(group, str(option)))
    return [(path, prefix) for path, prefix in files if path.is_file()]


def _group_option_files(group: str, option: str) -> list[tuple[Path, str]]:
    """The option's file after the files its own defaults list names: options of the same
    group, and shared files merged into it (`- /model_base@_here_`, conf/model_base.yaml)."""
    path = CONF_DIR / group / f"{option}.yaml"
    if not path.is_file():
        return []
    text = path.read_text()
    package = _PACKAGE.search(text)
    prefix = "" if package and package["package"] == "_global_" else f"{group.replace('/', '.')}."
    bases: list[tuple[Path, str]] = []
    in_defaults = False
    for line in text.splitlines():
        if line.startswith("defaults:"):
            in_defaults = True
            continue
        if in_defaults:
            entry = _DEFAULT_ENTRY.match(line)
            if entry is None:
                in_defaults = line.startswith((" ", "#"))
                continue
            name = entry["name"]
            if name.startswith("/") and entry["here"]:  # a shared file, under this file's keys
                bases.append((CONF_DIR / f"{name[1:]}.yaml", prefix))
            elif name not in ("_self_", option) and not entry["here"]:
                bases.extend(_group_option_files(group, name))
    return [*bases, (path, prefix)]


def key_descriptions(config_name: str, choices: dict[str, Any]) -> dict[str, str]:
    """Every commented key of the files this composition used, with its comment.

    A key the chosen files leave uncommented (`model.optimizer.lr` of a model whose file
    does not explain it) takes the comment another option of its group gives it.
    """
    descriptions: dict[str, str] = {}
    for path in sorted(CONF_DIR.glob("*/*.yaml")):
        if path.parent.name != "hydra":
            descriptions.update(yaml_key_comments(path, f"{path.parent.name}."))
    for path, prefix in config_files(config_name, choices):
        descriptions.update(yaml_key_comments(path, prefix))
    return descriptions


def default_text(cfg: DictConfig, key: str) -> str:
    """The key's value in the composed config as one short string (interpolations as written)."""
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    if not isinstance(parent, DictConfig):  # e.g. callbacks.early_stopping=null in a preset
        return f"none: {parent_key} is {'off (null)' if parent is None else repr(parent)}"
    if OmegaConf.is_interpolation(parent, leaf):
        return str(parent._get_node(leaf)._value())  # e.g. ${seed}, not the number
    value = OmegaConf.select(cfg, key)
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value)
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]  # YAML's spelling
    return str(value)


def main_keys_text(cfg: DictConfig, keys: list[str], config_name: str) -> str:
    """One line per key: `key (default: value)  description`."""
    choices = dict(OmegaConf.select(cfg, "hydra.runtime.choices") or {})
    descriptions = key_descriptions(config_name, choices)
    lines = []
    for key in keys:
        lines.append(f"  {key} (default: {default_text(cfg, key)})")
        described = first_sentence(descriptions.get(key, "(no comment in conf/)"))
        lines.extend(
            textwrap.wrap(described, width=90, initial_indent=" " * 6, subsequent_indent=" " * 6)
        )
    return "\n".join(lines)


def resolve_key_help(*keys: str, _root_: DictConfig) -> str:
    """The `key_help` resolver: `${key_help:CONFIG_NAME,key1,key2,...}` in a help template."""
    config_name, *names = keys
    # Hydra fills the template with string.Template next: a literal '$' must be doubled
    return main_keys_text(_root_, list(names), config_name).replace("$", "$$")
