"""The one convention every cvexp net follows for its per-layer outputs (after timm's).

`net.forward_intermediates(x, indices=None, intermediates_only=False)` returns the outputs
of the net's layers, each (B, C, h, w) (a ViT's patch tokens as a grid), and with
`intermediates_only=False` also the final features, as `(features, intermediates)`.
`indices`: None for every layer, an int n for the last n, or a list (negative from the end).
Nets with attention also have `attention_maps(x)`: one weight tensor per attention layer.
"""

from __future__ import annotations

from collections.abc import Sequence


def take_indices(count: int, indices: int | Sequence[int] | None) -> list[int]:
    """Validate layer indices against `count` layers; returns them as non-negative ints."""
    if indices is None:
        return list(range(count))
    if isinstance(indices, int):
        if not 0 < indices <= count:
            raise IndexError(f"asked for the last {indices} layers of {count}")
        return list(range(count - indices, count))
    chosen = []
    for index in indices:
        if not -count <= int(index) < count:
            raise IndexError(
                f"layer {index} is out of range: this network has {count} layers (0 to {count - 1})"
            )
        chosen.append(int(index) % count)
    return chosen
