"""cvexp-attention: the lecture's self-attention example on one sentence, step by step, with heatmaps.

cvexp-attention "This is Computer Vision Class" dim=10 dk=2 mask=causal
cvexp-attention "The cat sat on the mat" dim=8 heads=2 out=figures/
cvexp-attention ckpt_path=.../best.ckpt        # also: the similarity of a ViT's position embeddings
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from cvexp.models.worked_attention import (
    HeadSteps,
    WorkedAttention,
    check_options,
    worked_attention,
)
from cvexp.errors import UserError
from cvexp.runtime.exit import exit_on_user_error
from cvexp.runtime.hydra_app import CONFIG_PATH, VERSION_BASE, register_resolvers
from cvexp.viz.figures import save_figure
from cvexp.viz.positional import (
    patch_position_embeddings,
    position_similarity_figure,
    sinusoidal_encoding_figure,
    sinusoidal_patch_table,
)
from cvexp.viz.worked_attention import worked_attention_figure

DECIMALS = 2
INDENT = "    "


# ---------------------------------------------------------------------------------------------
# The command line: a bare sentence becomes sentence='...'
# ---------------------------------------------------------------------------------------------

# key=value (Hydra's override syntax): a key has no spaces, so "x = 1 is a sentence" is not one
OVERRIDE = re.compile(r"^[~+]{0,2}[A-Za-z_][\w.\-/@:]*=")
# Hydra's flags that take the next argument as their value
FLAGS_WITH_VALUE = {
    "-cn",
    "--config-name",
    "-cp",
    "--config-path",
    "-cd",
    "--config-dir",
    "-c",
    "--cfg",
    "-p",
    "--package",
    "-sc",
    "--shell-completion",
    "--experimental-rerun",
}
INFO_TOPICS = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}


def quote_override_value(text: str) -> str:
    """`text` as a single-quoted Hydra value that OmegaConf reads back exactly as `text`.

    OmegaConf would resolve '${...}', so it becomes '\\${...}'; Hydra reads backslashes
    specially only before a quote (or the closing quote), so only those are doubled.
    """
    text = re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", text)
    text = re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), text)
    return f"'{text}'"


def sentence_argv(args: Sequence[str]) -> list[str]:
    """Hydra's arguments from ours: the bare words (no key=) joined become sentence='...'.

    A `sentence=...` override that is not quoted already is quoted too, so that commas,
    apostrophes, '=' and '${' in it reach the config as typed. Flags (-m, --cfg job, ...)
    go first and the overrides after them, as Hydra's parser needs. Raises UserError when
    the sentence is given both ways.
    """
    flags: list[str] = []
    overrides: list[str] = []
    bare: list[str] = []
    keyed = False
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("-") and arg != "-":
            flags.append(arg)
            takes_value = arg in FLAGS_WITH_VALUE or (
                arg == "--info" and i + 1 < len(args) and args[i + 1] in INFO_TOPICS
            )
            if takes_value and i + 1 < len(args):
                flags.append(args[i + 1])
                i += 1
        elif OVERRIDE.match(arg):
            if arg.startswith("sentence="):
                keyed = True
                value = arg.removeprefix("sentence=")
                quoted = len(value) >= 2 and value[0] == value[-1] and value[0] in "'\""
                arg = arg if quoted else "sentence=" + quote_override_value(value)
            overrides.append(arg)
        else:
            bare.append(arg)
        i += 1
    if bare and keyed:
        raise UserError(
            "The sentence was given twice (as a bare argument and as sentence=); give it once."
        )
    if bare:
        overrides.insert(0, "sentence=" + quote_override_value(" ".join(bare)))
    return flags + overrides


# ---------------------------------------------------------------------------------------------
# Printing: aligned matrices, labelled with the words
# ---------------------------------------------------------------------------------------------


def format_number(value: float, decimals: int = DECIMALS) -> str:
    """One cell: a fixed number of decimals, '-inf' for a masked score."""
    if math.isinf(value):
        return "-inf" if value < 0 else "inf"
    text = f"{value:.{decimals}f}"
    return text if text.strip("-0.") else text.lstrip("-")  # no "-0.00"


def format_matrix(
    matrix: torch.Tensor,
    rows: Sequence[str],
    cols: Sequence[str],
    *,
    decimals: int = DECIMALS,
    indent: str = INDENT,
) -> str:
    """A (R, C) matrix as right-aligned text, with row and column labels."""
    whole = not matrix.is_floating_point()
    cells = [
        [str(int(v)) if whole else format_number(float(v), decimals) for v in row]
        for row in matrix.tolist()
    ]
    widths = [max(len(col), *(len(row[c]) for row in cells)) for c, col in enumerate(cols)]
    label_width = max(len(r) for r in rows)
    lines = [
        indent
        + " " * label_width
        + "  "
        + "  ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True))
    ]
    for label, row in zip(rows, cells, strict=True):
        lines.append(
            indent
            + label.rjust(label_width)
            + "  "
            + "  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True))
        )
    return "\n".join(lines)


Step = tuple[str, "Sequence[int] | str", str]  # (title, shape, body)


def numbered(first: int, steps: Sequence[Step], prefix: str = "") -> list[str]:
    """Steps as the lecture labels them: 'n. title  (shape)', then the matrix under it."""
    out = []
    for number, (title, shape, body) in enumerate(steps, start=first):
        size = shape if isinstance(shape, str) else " x ".join(str(s) for s in shape)
        out.append(f"{number}. {prefix}{title}  ({size})" + (f"\n{body}" if body else ""))
    return out


def head_steps(steps: WorkedAttention, head: HeadSteps) -> list[Step]:
    """One head's steps: W_Q, W_K, W_V, Q, K, V, scores, scaled, masked, weights, output."""
    words, d, dk, dv, t = steps.words, steps.dim, steps.dk, steps.dv, len(steps.words)
    rows_d = [str(i) for i in range(d)]
    k_cols, v_cols = [str(j) for j in range(dk)], [str(j) for j in range(dv)]
    if steps.mask_kind == "causal":
        masked: Step = (
            "masked scores: -inf above the diagonal (a word sees only itself and earlier words)",
            (t, t),
            format_matrix(head.masked, words, words),
        )
    else:
        masked = ("masked scores: mask=none, the scaled scores as they are", (t, t), "")
    return [
        ("W_Q", (d, dk), format_matrix(head.w_q, rows_d, k_cols)),
        ("W_K", (d, dk), format_matrix(head.w_k, rows_d, k_cols)),
        ("W_V", (d, dv), format_matrix(head.w_v, rows_d, v_cols)),
        ("Q = (X + P) W_Q", (t, dk), format_matrix(head.q, words, k_cols)),
        ("K = (X + P) W_K", (t, dk), format_matrix(head.k, words, k_cols)),
        ("V = (X + P) W_V", (t, dv), format_matrix(head.v, words, v_cols)),
        (
            "alignment scores Q K^T (row: query word, column: key word)",
            (t, t),
            format_matrix(head.scores, words, words),
        ),
        (
            f"scaled scores Q K^T / sqrt(d_k), sqrt({dk}) = {math.sqrt(dk):.{DECIMALS}f}",
            (t, t),
            format_matrix(head.scaled, words, words),
        ),
        masked,
        (
            "softmax weights, row by row (each row sums to 1)",
            (t, t),
            format_matrix(head.weights, words, words),
        ),
        ("output = weights x V", (t, dv), format_matrix(head.output, words, v_cols)),
    ]


def report(steps: WorkedAttention) -> str:
    """Every step of the worked example as labelled, aligned text."""
    words, vocab, d, t = steps.words, steps.vocab, steps.dim, len(steps.words)
    dims = [str(j) for j in range(d)]
    width = max(len(w) for w in vocab)
    mapping = "\n".join(f"{INDENT}{w.rjust(width)} -> {i}" for i, w in enumerate(vocab))
    ids = " ".join(str(i) for i in steps.ids.tolist())
    formula = "p(pos, 2i) = sin(pos / 10000^(2i/d)),  p(pos, 2i+1) = cos(pos / 10000^(2i/d))"
    out = [
        f'Self-attention, step by step, on "{steps.sentence}"\n'
        f"T = {t} words, d = {d}, d_k = {steps.dk}, d_v = {steps.dv}, heads = {steps.num_heads}, "
        f"mask = {steps.mask_kind}, seed = {steps.seed}",
        *numbered(
            1,
            [
                (
                    "vocabulary: word -> integer",
                    f"V = {len(vocab)}",
                    f"{mapping}\n{INDENT}the sentence as integers: [{ids}]",
                ),
                (
                    "one-hot matrix (row: word, column: vocabulary word)",
                    (t, len(vocab)),
                    format_matrix(steps.one_hot.long(), words, vocab),
                ),
                (
                    "embedding matrix E (one row per vocabulary word)",
                    (len(vocab), d),
                    format_matrix(steps.embedding, vocab, dims),
                ),
                ("one-hot x E = word vectors X", (t, d), format_matrix(steps.x, words, dims)),
                (
                    "positional encoding P (pos = 0 for the first word)",
                    (t, d),
                    f"{INDENT}{formula}\n"
                    + format_matrix(steps.pos, [f"{i} {w}" for i, w in enumerate(words)], dims),
                ),
                ("X + P", (t, d), format_matrix(steps.x_pos, words, dims)),
            ],
        ),
    ]
    for h, head in enumerate(steps.heads):  # every head: the same steps 7-17, its own W's
        prefix = f"[head {h + 1}/{steps.num_heads}] " if steps.num_heads > 1 else ""
        out += numbered(7, head_steps(steps, head), prefix)
    if steps.num_heads > 1:
        hd = steps.num_heads * steps.dv
        cols = [str(j) for j in range(hd)]
        out += numbered(
            18,
            [
                (
                    "concatenated heads [out_1 ... out_h]",
                    (t, hd),
                    format_matrix(steps.concat, words, cols),
                ),
                ("W_out", (hd, d), format_matrix(steps.w_out, cols, dims)),
                (
                    "multi-head output = concat x W_out",
                    (t, d),
                    format_matrix(steps.output, words, dims),
                ),
            ],
        )
    return "\n\n".join(out)


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def checkpoint_positions(path: str, *, trust: bool) -> tuple[torch.Tensor, int] | None:
    """A ViT checkpoint's patch position embeddings (N, D) and grid side; None if it has none."""
    from cvexp.checkpoint import load_classifier  # the Lightning import, only when asked

    classifier, _ = load_classifier(path, trust=trust)
    try:
        found = patch_position_embeddings(classifier.net)
    except TypeError:
        raise UserError(
            f"{path} holds a {type(classifier.net).__name__}, not a Vision Transformer, so it has no "
            "position embeddings to draw; pass ckpt_path= a checkpoint of a model=vit run."
        ) from None
    if found is None:
        print(
            f"note: the ViT in {path} has no positional embedding (pos_embed=none): its patches "
            "carry no position, so there is no position similarity to draw."
        )
    return found


def attention_example(cfg: DictConfig) -> dict[str, Any]:
    """Print the worked example for `cfg.sentence`, write its figures; returns the steps and paths."""
    options = {
        "dim": cfg.dim,
        "dk": cfg.dk,
        "dv": cfg.dv,
        "num_heads": cfg.heads,
        "mask": cfg.mask,
    }
    try:
        check_options(cfg.sentence, **options)
        if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int):
            raise ValueError(f"seed={cfg.seed!r} is not allowed; seed must be a whole number.")
        for key in ("positions", "dim", "grid"):
            value = cfg.positional[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"positional.{key}={value!r} is not allowed; it must be a whole number >= 1."
                )
    except ValueError as error:
        raise UserError(str(error)) from None
    positions = (
        checkpoint_positions(cfg.ckpt_path, trust=cfg.trust_checkpoint) if cfg.ckpt_path else None
    )

    steps = worked_attention(cfg.sentence, seed=cfg.seed, **options)
    print(report(steps), flush=True)

    out_dir = Path(cfg.out).expanduser() if cfg.out else Path(cfg.paths.output_dir)
    grid, table_dim = cfg.positional.grid, cfg.positional.dim
    paths = {
        "attention": save_figure(worked_attention_figure(steps), out_dir / "attention.png"),
        "positional_encoding": save_figure(
            sinusoidal_encoding_figure(cfg.positional.positions, table_dim),
            out_dir / "positional_encoding.png",
        ),
        "similarity_sinusoidal": save_figure(
            position_similarity_figure(
                sinusoidal_patch_table(grid, table_dim),
                grid,
                title=f"Sinusoidal table (D = {table_dim}), {grid}x{grid} patches",
            ),
            out_dir / "position_similarity_sinusoidal.png",
        ),
    }
    if positions is not None:
        table, ckpt_grid = positions
        paths["similarity_checkpoint"] = save_figure(
            position_similarity_figure(
                table,
                ckpt_grid,
                title=f"{Path(cfg.ckpt_path).name}: position embeddings (D = {table.shape[1]})",
            ),
            out_dir / "position_similarity_checkpoint.png",
        )
    print("\nFigures:\n" + "\n".join(f"{INDENT}{p}" for p in paths.values()))
    return {"steps": steps, "paths": paths}


register_resolvers()


@hydra.main(version_base=VERSION_BASE, config_path=CONFIG_PATH, config_name="attention")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    """The Hydra app behind `cvexp-attention`."""
    attention_example(cfg)


def cli() -> None:
    """Console entry point `cvexp-attention`: the bare sentence becomes sentence='...' first."""
    try:
        sys.argv = [sys.argv[0], *sentence_argv(sys.argv[1:])]
    except UserError as error:
        print(f"cvexp-attention: error: {error}", file=sys.stderr)
        sys.exit(2)
    main()


if __name__ == "__main__":
    cli()
