"""The lecture's worked self-attention example on one sentence, step by step, in plain torch.

The steps, as the lecture labels them (T words, V distinct words, d = dim):

1. vocabulary: each distinct word gets an integer, in order of first appearance;
2. one-hot matrix (T, V) times the embedding matrix E (V, d) = the word vectors X (T, d);
3. the sinusoidal positional encoding P (T, d), position 0 for the first word, added: X + P;
4. per head: Q = (X + P) W_Q, K = (X + P) W_K, V = (X + P) W_V, with W_Q, W_K (d, d_k), W_V (d, d_v);
5. alignment scores Q K^T (T, T), scaled by 1 / sqrt(d_k), optionally masked with -inf above
   the diagonal (causal), a row softmax gives the weights, and weights x V the output (T, d_v);
6. with several heads: the heads' outputs concatenated (T, h d_v), times W_out (h d_v, d).

The positional table and the attention step are the ViT's own (`sinusoidal_table`,
`explicit_attention` in cvexp.models.vit), not copies. E is drawn from a standard normal and
the W matrices from a normal with std 1 / sqrt(fan-in), all from one seeded generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from cvexp.models.vit import explicit_attention, sinusoidal_table

MaskKind = Literal["none", "causal"]
MASKS = ("none", "causal")


@dataclass(frozen=True)
class HeadSteps:
    """One head's steps; T words."""

    w_q: torch.Tensor  # (d, d_k)
    w_k: torch.Tensor  # (d, d_k)
    w_v: torch.Tensor  # (d, d_v)
    q: torch.Tensor  # (T, d_k)
    k: torch.Tensor  # (T, d_k)
    v: torch.Tensor  # (T, d_v)
    scores: torch.Tensor  # (T, T): Q K^T
    scaled: torch.Tensor  # (T, T): Q K^T / sqrt(d_k)
    masked: torch.Tensor  # (T, T): scaled, -inf where attention is not allowed
    weights: torch.Tensor  # (T, T): row softmax of masked, rows sum to 1
    output: torch.Tensor  # (T, d_v): weights V


@dataclass(frozen=True)
class WorkedAttention:
    """Every named step of the worked example, for one sentence."""

    sentence: str
    words: list[str]  # T words, in order
    vocab: list[str]  # V distinct words; vocab[i] has the integer i
    dim: int  # d
    dk: int
    dv: int
    num_heads: int
    mask_kind: MaskKind
    seed: int
    ids: torch.Tensor  # (T,) int64: each word's integer
    one_hot: torch.Tensor  # (T, V)
    embedding: torch.Tensor  # (V, d): E
    x: torch.Tensor  # (T, d): one-hot x E, the word vectors
    pos: torch.Tensor  # (T, d): P, the sinusoidal positional encoding
    x_pos: torch.Tensor  # (T, d): X + P
    mask: torch.Tensor | None  # (T, T) bool, True where attention is allowed; None for no mask
    heads: list[HeadSteps]
    concat: torch.Tensor | None  # (T, h d_v): the heads' outputs side by side; None for one head
    w_out: torch.Tensor | None  # (h d_v, d); None for one head
    output: torch.Tensor  # (T, d_v) for one head, (T, d) = concat W_out for several


def tokenize(sentence: str) -> list[str]:
    """The sentence's words: split at whitespace, punctuation kept with its word."""
    return sentence.split()


def vocabulary(words: list[str]) -> list[str]:
    """The distinct words in order of first appearance; a word's index is its integer."""
    return list(dict.fromkeys(words))


def check_options(
    sentence: str,
    *,
    dim: int,
    dk: int | None,
    dv: int | None,
    num_heads: int,
    mask: str,
) -> None:
    """Raise ValueError, one sentence that names the fix, for options the example cannot use."""
    if not isinstance(sentence, str) or not tokenize(sentence):
        raise ValueError(
            'The sentence is empty; pass one, e.g. cvexp-attention "This is Computer Vision Class".'
        )
    for name, value in (("dim", dim), ("dk", dk), ("dv", dv), ("heads", num_heads)):
        if value is None and name in ("dk", "dv"):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"{name}={value!r} is not allowed; {name} must be a whole number >= 1."
            )
    if dk is None and dim % num_heads:
        raise ValueError(
            f"heads={num_heads} does not divide dim={dim}, so there is no per-head size dim/heads; "
            "choose heads that divides dim, or give the per-head size with dk=."
        )
    if mask not in MASKS:
        raise ValueError(f"mask={mask!r} is not known; use mask=none or mask=causal.")


def causal_mask(num_tokens: int) -> torch.Tensor:
    """(T, T) bool, True on and below the diagonal: word i may attend to words 0..i."""
    return torch.ones(num_tokens, num_tokens, dtype=torch.bool).tril()


def worked_attention(
    sentence: str,
    *,
    dim: int = 10,
    dk: int | None = None,
    dv: int | None = None,
    num_heads: int = 1,
    mask: MaskKind = "none",
    seed: int = 0,
) -> WorkedAttention:
    """Run the lecture's example on `sentence`; dk defaults to dim / heads, dv to dk."""
    check_options(sentence, dim=dim, dk=dk, dv=dv, num_heads=num_heads, mask=mask)
    dk = dim // num_heads if dk is None else dk
    dv = dk if dv is None else dv
    generator = torch.Generator().manual_seed(seed)

    words = tokenize(sentence)
    vocab = vocabulary(words)
    index = {word: i for i, word in enumerate(vocab)}
    ids = torch.tensor([index[w] for w in words], dtype=torch.int64)  # (T,)
    t = len(words)

    one_hot = torch.nn.functional.one_hot(ids, len(vocab)).float()  # (T, V)
    embedding = torch.randn(len(vocab), dim, generator=generator)  # (V, d)
    x = one_hot @ embedding  # (T, d): row i is E[ids[i]]
    pos = sinusoidal_table(t, dim)  # (T, d): position 0 is the first word
    x_pos = x + pos  # (T, d)

    def weight(rows: int, cols: int) -> torch.Tensor:
        return torch.randn(rows, cols, generator=generator) / math.sqrt(rows)

    w_q = torch.stack([weight(dim, dk) for _ in range(num_heads)])  # (h, d, d_k)
    w_k = torch.stack([weight(dim, dk) for _ in range(num_heads)])  # (h, d, d_k)
    w_v = torch.stack([weight(dim, dv) for _ in range(num_heads)])  # (h, d, d_v)
    q = x_pos @ w_q  # (h, T, d_k)
    k = x_pos @ w_k  # (h, T, d_k)
    v = x_pos @ w_v  # (h, T, d_v)

    attn_mask = causal_mask(t) if mask == "causal" else None  # (T, T) or None
    out, weights = explicit_attention(q[None], k[None], v[None], attn_mask)  # the ViT's step
    out, weights = out[0], weights[0]  # (h, T, d_v), (h, T, T)

    scores = q @ k.transpose(-2, -1)  # (h, T, T), shown before the scaling
    scaled = scores / math.sqrt(dk)  # (h, T, T)
    masked = scaled if attn_mask is None else scaled.masked_fill(~attn_mask, float("-inf"))

    heads = [
        HeadSteps(
            w_q=w_q[i],
            w_k=w_k[i],
            w_v=w_v[i],
            q=q[i],
            k=k[i],
            v=v[i],
            scores=scores[i],
            scaled=scaled[i],
            masked=masked[i],
            weights=weights[i],
            output=out[i],
        )
        for i in range(num_heads)
    ]
    if num_heads == 1:
        concat, w_out, output = None, None, out[0]  # (T, d_v)
    else:
        concat = torch.cat(list(out), dim=-1)  # (T, h d_v)
        w_out = weight(num_heads * dv, dim)  # (h d_v, d)
        output = concat @ w_out  # (T, d)
    return WorkedAttention(
        sentence=sentence,
        words=words,
        vocab=vocab,
        dim=dim,
        dk=dk,
        dv=dv,
        num_heads=num_heads,
        mask_kind=mask,
        seed=seed,
        ids=ids,
        one_hot=one_hot,
        embedding=embedding,
        x=x,
        pos=pos,
        x_pos=x_pos,
        mask=attn_mask,
        heads=heads,
        concat=concat,
        w_out=w_out,
        output=output,
    )
