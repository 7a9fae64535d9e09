"""The lecture's self-attention example in one call: print every step, write the figures.

    from cvexp.lecture.attention_example import attention_example

    result = attention_example("This is Computer Vision Class", out="figures", dk=2, mask="causal")
    result["steps"].heads[0].weights  # the numbers; result["report"] is the printed text

`cvexp-attention` is this function behind a command line (cvexp/cli/attention.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any

from cvexp.errors import UserError
from cvexp.lecture.attention_figure import worked_attention_figure
from cvexp.lecture.position_embeddings import checkpoint_positions, sinusoidal_patch_table
from cvexp.lecture.positional_figures import position_similarity_figure, sinusoidal_encoding_figure
from cvexp.lecture.report import INDENT, report
from cvexp.lecture.worked_attention import check_options, worked_attention
from cvexp.viz.figures import save_figure


@dataclass(frozen=True)
class PositionalFigures:
    """The sizes of the two position figures (the `positional` keys of conf/attention.yaml)."""

    positions: int = 64  # rows of the sinusoidal table figure
    dim: int = 128  # its columns, and the size of the vectors in the similarity figure
    grid: int = 8  # the similarity figure's image is cut into grid x grid patches


def check_whole_numbers(seed: Any, positional: PositionalFigures) -> None:
    """Raise UserError, one sentence that names the fix, for a seed or a figure size that is not usable."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UserError(f"seed={seed!r} is not allowed; seed must be a whole number.")
    for key in ("positions", "dim", "grid"):
        value = getattr(positional, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(
                f"positional.{key}={value!r} is not allowed; it must be a whole number >= 1."
            )


def figures_in(folder: Path) -> list[str]:
    """The names of the PNG files directly in `folder`, sorted; none if it does not exist."""
    return sorted(p.name for p in folder.glob("*.png")) if folder.is_dir() else []


def check_output_folder(out: Path) -> None:
    """Refuse a folder that is a file, or that already holds figures: no figure is ever overwritten."""
    if out.exists() and not out.is_dir():
        raise UserError(f"out={out} is a file, not a folder; pass out=<a new folder>.")
    earlier = figures_in(out)
    if earlier:
        named = out if out.name else out.resolve()  # '.' has no name to number
        fresh = next(
            folder
            for n in count(1)
            if not figures_in(folder := named.with_name(f"{named.name}-{n}"))
        )
        shown = ", ".join(earlier[:3]) + (", ..." if len(earlier) > 3 else "")
        raise UserError(
            f"{out} already holds figures ({shown}), which cvexp-attention never overwrites; "
            f"pass another folder, e.g. out={fresh}."
        )


def attention_example(
    sentence: str,
    *,
    out: str | Path,
    dim: int = 10,
    dk: int | None = None,
    dv: int | None = None,
    heads: int = 1,
    mask: str = "none",
    seed: int = 0,
    positional: PositionalFigures = PositionalFigures(),
    ckpt_path: str | None = None,
    trust_checkpoint: bool = False,
) -> dict[str, Any]:
    """Print the worked example for `sentence` step by step and write its figures into `out`.

    The figures are attention.png, positional_encoding.png, position_similarity_sinusoidal.png
    and, for a ViT checkpoint `ckpt_path` with position embeddings,
    position_similarity_checkpoint.png. Returns {"steps": WorkedAttention, "report": the
    printed text, "paths": figure name -> file}. Raises UserError for unusable options and for
    an `out` folder that already holds figures (nothing is printed or written then).
    """
    options = {"dim": dim, "dk": dk, "dv": dv, "num_heads": heads, "mask": mask}
    try:
        check_options(sentence, **options)
    except ValueError as error:
        raise UserError(str(error)) from None
    check_whole_numbers(seed, positional)
    out_dir = Path(out).expanduser()
    check_output_folder(out_dir)
    positions = checkpoint_positions(ckpt_path, trust=trust_checkpoint) if ckpt_path else None

    steps = worked_attention(sentence, seed=seed, **options)
    text = report(steps)
    print(text, flush=True)

    grid, table_dim = positional.grid, positional.dim
    paths = {
        "attention": save_figure(worked_attention_figure(steps), out_dir / "attention.png"),
        "positional_encoding": save_figure(
            sinusoidal_encoding_figure(positional.positions, table_dim),
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
                title=f"{Path(ckpt_path).name}: position embeddings (D = {table.shape[1]})",
            ),
            out_dir / "position_similarity_checkpoint.png",
        )
    print("\nFigures:\n" + "\n".join(f"{INDENT}{p}" for p in paths.values()))
    return {"steps": steps, "report": text, "paths": paths}
