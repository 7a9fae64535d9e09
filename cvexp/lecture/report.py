"""The worked self-attention example as the lecture prints it: every step labelled and numbered,
each matrix aligned and labelled with the words.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from cvexp.lecture.worked_attention import HeadSteps, WorkedAttention

DECIMALS = 2
INDENT = "    "


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
