"""Mixup and CutMix on a training batch: images mixed with a partner, labels as soft targets."""

from __future__ import annotations

import torch
from torchvision.transforms import v2


class BatchMixer:
    """Mixup (Zhang et al., 2018) and/or CutMix (Yun et al., 2019) on a whole batch, on its device.

    Each image is mixed with its neighbour in the (already shuffled) batch by one ratio drawn
    per batch from Beta(alpha, alpha): Mixup blends the two images, CutMix pastes a box of the
    neighbour whose area matches the ratio. The labels become soft targets (B, num_classes),
    the same mixture of the two one-hot labels, so each row sums to 1. With both alphas set,
    each batch gets one of the two, chosen with equal odds (timm's and torchvision's recipes).
    This is torchvision's transforms.v2.MixUp and CutMix.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        mixup_alpha: float | None = None,
        cutmix_alpha: float | None = None,
    ) -> None:
        mixers: list[v2.Transform] = []
        if mixup_alpha is not None:
            mixers.append(v2.MixUp(alpha=float(mixup_alpha), num_classes=num_classes))
        if cutmix_alpha is not None:
            mixers.append(v2.CutMix(alpha=float(cutmix_alpha), num_classes=num_classes))
        if not mixers:
            raise ValueError("BatchMixer needs mixup_alpha, cutmix_alpha or both.")
        self.mix = mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, C, H, W) float, labels (B,) int64 -> mixed images, soft targets (B, num_classes)."""
        return self.mix(images, labels)
