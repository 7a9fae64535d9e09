"""cvexp-attention: the lecture's self-attention example on one sentence, step by step, with heatmaps.

cvexp-attention "This is Computer Vision Class" dim=10 dk=2 mask=causal
cvexp-attention "The cat sat on the mat" dim=8 heads=2 out=figures
cvexp-attention sentence="E=mc2" seed=3        # a one-word sentence with '=' in it
cvexp-attention ckpt_path=.../best.ckpt        # also: the similarity of a ViT's position embeddings

The command line is Hydra's: flags first (--help, --cfg job, -m, ...), then key=value
overrides of conf/attention.yaml. The sentence is `sentence="..."`, or ONE bare argument.
Which argument is the bare sentence, among those Hydra's own parser leaves as overrides:

    an argument is the sentence when it has no '=', or when it has whitespace and the text
    before its first '=' is not a key of conf/attention.yaml (dim, out, paths, ...).

So "This is Computer Vision Class", "Hello" and "E=mc2 is famous" are sentences, while
dim=10, out="my figures" and sentence="Hi there" are overrides. A one-word sentence that
contains '=' is given as sentence="E=mc2" (E=mc2 alone is refused as an unknown key E).
The sentence reaches Hydra quoted, so that commas, quotes, '=' and '${' in it reach the
config as typed.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Sequence
from typing import Any

import hydra
from hydra import compose, initialize_config_module
from hydra._internal.utils import get_args_parser
from omegaconf import DictConfig

from cvexp.errors import UserError, exit_with_error
from cvexp.runtime.config import register_resolvers
from cvexp.runtime.exit import exit_on_user_error
from cvexp.runtime.hydra_app import CONFIG_PATH, VERSION_BASE

CONFIG_NAME = "attention"

register_resolvers()


@functools.cache
def config_keys() -> frozenset[str]:
    """The top-level keys of this command's config, and `hydra`: the keys an override starts with."""
    with initialize_config_module(config_module="cvexp.conf", version_base=VERSION_BASE):
        return frozenset({*compose(CONFIG_NAME), "hydra"})


def config_key(arg: str) -> str:
    """The top-level key an override sets: `positional` for positional.grid=4, `hydra` for
    hydra/launcher=basic (for "E=mc2 is famous", `E`)."""
    return re.split(r"[./@]", arg.partition("=")[0].lstrip("+~"))[0]


def is_sentence(arg: str) -> bool:
    """Whether an argument that Hydra's parser takes for an override is the bare sentence."""
    if "=" not in arg:
        return True  # "Hello", "This is Computer Vision Class"
    if not any(c.isspace() for c in arg):
        return False  # "dim=10"
    return config_key(arg) not in config_keys()  # "E=mc2 is famous"


def quote_value(text: str) -> str:
    """`text` as a single-quoted Hydra value that OmegaConf reads back exactly as `text`.

    OmegaConf would resolve '${...}', so it becomes '\\${...}'; Hydra reads backslashes
    specially only before a quote (or the closing quote), so only those are doubled.
    """
    text = re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", text)
    text = re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), text)
    return f"'{text}'"


def sentence_override(arg: str) -> str | None:
    """`sentence='...'` for an argument that gives the sentence (bare or as sentence=); else None.

    A sentence= value already in quotes is left as typed: Hydra reads it.
    """
    if arg.startswith("sentence="):
        value = arg.removeprefix("sentence=")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            return arg
        return "sentence=" + quote_value(value)
    return "sentence=" + quote_value(arg) if is_sentence(arg) else None


def hydra_arguments(args: Sequence[str]) -> list[str]:
    """Hydra's command line from ours: the sentence, bare or as sentence=, becomes sentence='...'.

    Hydra's own argument parser says which arguments are overrides (so a flag's value, as in
    `--cfg job`, is never the sentence). Raises UserError when more than one gives the sentence.
    """
    args = list(args)
    parsed = get_args_parser().parse_args(args)  # Hydra's usage error, if any
    if parsed.shell_completion:  # -sc install=bash, query=bash: Hydra's, as they are
        return args
    overrides = parsed.overrides
    given = [(arg, quoted) for arg in overrides if (quoted := sentence_override(arg))]
    if len(given) > 1:
        bare = [arg for arg, _ in given if not arg.startswith("sentence=")]
        if len(bare) == len(given):
            raise UserError(
                f"{len(bare)} arguments look like the sentence ({', '.join(bare)}); put the "
                f'sentence in quotes as one argument, e.g. cvexp-attention "{" ".join(bare)}".'
            )
        raise UserError(
            "The sentence was given twice (as a bare argument and as sentence=); give it once."
        )
    unknown = [
        arg
        for arg in overrides
        if not arg.startswith(("+", "~"))
        and not sentence_override(arg)
        and config_key(arg) not in config_keys()
    ]
    if unknown:  # Hydra refuses these too, but its hint for E=mc2 is +E=mc2, not the sentence
        keys = ", ".join(sorted(config_keys() - {"hydra", "paths"}))
        raise UserError(
            f"{unknown[0]} sets {config_key(unknown[0])}, which is not a key of cvexp-attention "
            f"({keys}); for a one-word sentence with '=' in it, pass sentence={unknown[0]!r}."
        )
    for arg, quoted in given:
        where = len(args) - 1 - args[::-1].index(arg)  # the overrides come after the flags
        args[where] = quoted
    return args


def example_from_config(cfg: DictConfig) -> dict[str, Any]:
    """attention_example() with the options of a composed conf/attention.yaml."""
    # imported here, not at the top, so that --help starts without torch
    from cvexp.lecture.attention_example import PositionalFigures, attention_example

    return attention_example(
        cfg.sentence,
        out=str(cfg.out) if cfg.out else cfg.paths.output_dir,
        dim=cfg.dim,
        dk=cfg.dk,
        dv=cfg.dv,
        heads=cfg.heads,
        mask=cfg.mask,
        seed=cfg.seed,
        positional=PositionalFigures(
            positions=cfg.positional.positions,
            dim=cfg.positional.dim,
            grid=cfg.positional.grid,
        ),
        ckpt_path=cfg.ckpt_path,
        trust_checkpoint=cfg.trust_checkpoint,
    )


@hydra.main(version_base=VERSION_BASE, config_path=CONFIG_PATH, config_name=CONFIG_NAME)
@exit_on_user_error
def app(cfg: DictConfig) -> None:
    """The Hydra app: the worked example for the composed config."""
    example_from_config(cfg)


def main() -> None:
    """Console entry point `cvexp-attention`: the sentence becomes sentence='...', then Hydra runs."""
    try:
        sys.argv[1:] = hydra_arguments(sys.argv[1:])
    except UserError as error:
        exit_with_error(str(error))
    app()


if __name__ == "__main__":
    main()
