"""Batched augmentation on uint8 image batches, on whatever device the batch is on."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms import v2


def to_float_chw(images: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) uint8 -> (B, C, H, W) float in [0, 1]."""
    return images.permute(0, 3, 1, 2).float().div_(255.0)


def random_crop(
    images: torch.Tensor, padding: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Zero-pad each image by `padding` pixels and crop it back at an independent random offset.

    images: (B, C, H, W), any dtype.
    """
    if padding <= 0:
        return images
    b, c, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))  # (B, C, H+2p, W+2p)
    offsets = torch.randint(0, 2 * padding + 1, (2, b), device=images.device, generator=generator)
    rows = offsets[0, :, None] + torch.arange(h, device=images.device)  # (B, H)
    cols = offsets[1, :, None] + torch.arange(w, device=images.device)  # (B, W)
    batch = torch.arange(b, device=images.device)[:, None, None, None]
    channel = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]  # (B, C, H, W)


def random_hflip(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2.  images: (B, C, H, W)."""
    flip = torch.rand(images.shape[0], device=images.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def rand_augment(images: torch.Tensor, *, num_ops: int, magnitude: int) -> torch.Tensor:
    """torchvision's RandAugment with independent ops per image.  images: (B, C, H, W) uint8.

    torchvision applies one draw of ops to a whole batch tensor, so each image is transformed
    on its own; the images stay on their device.
    """
    op = v2.RandAugment(num_ops=num_ops, magnitude=magnitude)
    return torch.stack([op(image) for image in images])  # (B, C, H, W)


def augment_batch(
    images: torch.Tensor,
    *,
    crop_padding: int = 4,
    hflip: bool = True,
    randaugment_ops: int = 0,
    randaugment_magnitude: int = 9,
) -> torch.Tensor:
    """Training augmentation on a uint8 batch: (B, H, W, C) -> (B, C, H, W) float in [0, 1].

    Random crop with zero padding, horizontal flip, and (when randaugment_ops > 0) RandAugment.
    """
    x = images.permute(0, 3, 1, 2)  # (B, C, H, W) uint8
    x = random_crop(x, crop_padding)
    if hflip:
        x = random_hflip(x)
    if randaugment_ops > 0:
        x = rand_augment(x.contiguous(), num_ops=randaugment_ops, magnitude=randaugment_magnitude)
    return x.float().div_(255.0)
