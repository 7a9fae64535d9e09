"""What a network costs: multiply-accumulates per image and parameters (pure torch)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_macs_and_params(net: nn.Module, image_size: int = 32) -> tuple[float, int]:
    """(multiply-accumulates for one image_size x image_size RGB image, parameters) of `net`.

    torch.utils.flop_counter counts matmuls and convolutions (FLOPs = 2 x MACs); a layer with an
    `uncounted_macs(height, width)` method (local self-attention) adds what it cannot see.
    Elementwise work (normalisation, activations, pooling, biases) is not counted.
    """
    uncounted: list[int] = []  # per forward of a layer that documents what flop_counter misses

    def add_uncounted(module: nn.Module, inputs: tuple[torch.Tensor, ...], _: Any) -> None:
        height, width = inputs[0].shape[-2:]
        uncounted.append(len(inputs[0]) * module.uncounted_macs(int(height), int(width)))

    hooks = [
        module.register_forward_hook(add_uncounted)
        for module in net.modules()
        if callable(getattr(module, "uncounted_macs", None))
    ]
    counter = FlopCounterMode(display=False)
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad(), counter:
            net(torch.rand(1, 3, image_size, image_size))
    finally:
        for hook in hooks:
            hook.remove()
        net.train(was_training)
    macs = counter.get_total_flops() / 2 + sum(uncounted)
    return float(macs), sum(p.numel() for p in net.parameters())
