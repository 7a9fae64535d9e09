"""The position tables whose similarity the lecture draws: the sinusoidal table of a patch grid,
and the position embeddings a ViT checkpoint holds.
"""

from __future__ import annotations

import torch
from torch import nn

from cvexp.errors import UserError
from cvexp.models.vit import VisionTransformer, sinusoidal_table


def sinusoidal_patch_table(grid: int, dim: int) -> torch.Tensor:
    """The scratch ViT's sinusoidal table for a G x G patch grid, patches only: (G*G, D).

    Row 0 of the ViT's table is the class token, so the patches are rows 1..G*G.
    """
    return sinusoidal_table(1 + grid * grid, dim)[1:]


def patch_position_embeddings(net: nn.Module) -> tuple[torch.Tensor, int] | None:
    """A ViT's position embeddings of its patches, (G*G, D), and the grid side G; None if it has none.

    Reads cvexp's scratch VisionTransformer (class token at position 0) and a timm ViT inside
    cvexp's TimmClassifier (prefix tokens skipped). Raises TypeError for a network without them.
    """
    if isinstance(net, VisionTransformer):
        if net.pos_embed is None:
            return None
        return net.pos_embed.detach()[0, 1:].float().cpu(), net.patch_embed.grid  # (N, D)
    model = getattr(net, "model", None)
    pos_embed = getattr(model, "pos_embed", None)
    grid_size = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if isinstance(pos_embed, torch.Tensor) and grid_size is not None:
        if grid_size[0] != grid_size[1]:
            raise TypeError(f"the patch grid {tuple(grid_size)} is not square")
        table = pos_embed.detach()[0].float().cpu()  # (prefix + N, D) or (N, D)
        if not getattr(model, "no_embed_class", False):
            table = table[getattr(model, "num_prefix_tokens", 1) :]
        return table, int(grid_size[0])
    if hasattr(model, "pos_embed"):  # a timm ViT built without position embeddings
        return None
    raise TypeError(f"{type(net).__name__} is not a Vision Transformer")


def checkpoint_positions(path: str, *, trust: bool) -> tuple[torch.Tensor, int] | None:
    """A ViT checkpoint's patch position embeddings (N, D) and grid side; None if it has none."""
    # imported here, not at the top: Lightning takes seconds to import, and only ckpt_path= needs it
    from cvexp.checkpoint import load_classifier

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
