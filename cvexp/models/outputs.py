"""How many classes a net tells apart: the length of its logits, found by running it once."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def logit_count(net: nn.Module, image_size: int = 32) -> int:
    """The number of logits `net` returns for one image of zeros (3, image_size, image_size),
    run in eval mode on the net's own device (its mode is restored afterwards)."""
    device = next(net.parameters(), torch.empty(0)).device
    training = net.training
    try:
        logits = net.eval()(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        net.train(training)
    return int(logits.shape[1])
