"""Batched augmentation on uint8 image batches, on whatever device the batch is on."""

from __future__ import annotations

import functools
import math

import torch
from torchvision.transforms import v2

from cvexp.models.normalize import CIFAR10_MEAN


def to_float_chw(images: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) uint8 -> contiguous (B, C, H, W) float in [0, 1], in one converting copy."""
    b, h, w, c = images.shape
    out = torch.empty((b, c, h, w), dtype=torch.float32, device=images.device)
    return out.copy_(images.permute(0, 3, 1, 2)).div_(255.0)


@functools.lru_cache(maxsize=8)
def _window_table(h: int, w: int, padding: int, device: torch.device) -> torch.Tensor:
    """Every crop window of a padded (H+2p, W+2p) image, plain and mirrored, as flat pixel
    indices: (2 * (2p+1)^2, H*W) int32, row `flip * n*n + dy * n + dx` with n = 2p + 1."""
    n, wp = 2 * padding + 1, w + 2 * padding
    rows = torch.arange(h, device=device)[:, None] * wp  # (H, 1)
    plain = (rows + torch.arange(w, device=device)).view(1, h * w)  # top-left window
    mirrored = (rows + torch.arange(w, device=device).flip(0)).view(1, h * w)
    shifts = torch.arange(n, device=device)[:, None] * wp + torch.arange(n, device=device)
    shifts = shifts.view(n * n, 1)  # (n*n, 1): dy * wp + dx
    return torch.cat([plain + shifts, mirrored + shifts]).to(torch.int32)


def random_crop_flip(
    images: torch.Tensor,
    padding: int,
    *,
    hflip: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Zero-pad each image by `padding`, crop it back at an independent random offset and,
    with `hflip`, mirror it left-right with probability 1/2.  images: (B, H, W, C), any dtype.

    Crop and flip are one gather of whole pixels by index from a table of all windows,
    several times faster than indexing the four dimensions separately.
    """
    b, h, w, c = images.shape
    if padding <= 0 and not hflip:
        return images
    dev = images.device
    hp, wp, n = h + 2 * padding, w + 2 * padding, 2 * padding + 1
    padded = images.new_zeros((b, hp, wp, c))
    padded[:, padding : padding + h, padding : padding + w] = images
    dy, dx = torch.randint(0, n, (2, b), device=dev, generator=generator)  # offsets in the padding
    window = dy * n + dx
    if hflip:
        flip = torch.rand(b, device=dev, generator=generator) < 0.5
        window = window + flip * (n * n)
    first = torch.arange(0, b * hp * wp, hp * wp, device=dev, dtype=torch.int32)[:, None]
    pixels = _window_table(h, w, padding, dev).index_select(0, window) + first  # (B, H*W)
    return padded.view(-1, c).index_select(0, pixels.view(-1)).view(b, h, w, c)


# the per-image policies that data.auto_augment names, as alternatives to RandAugment
AUTO_AUGMENT_POLICIES = ("autoaugment", "trivialaugment")


def _each_image(images: torch.Tensor, op: v2.Transform) -> torch.Tensor:
    """Apply a torchvision policy to each image on its own.  images: (B, C, H, W) uint8.

    torchvision applies one draw of ops to a whole batch tensor, so each image is transformed
    on its own, with its own draw; the images stay on their device.
    """
    return torch.stack([op(image) for image in images])  # (B, C, H, W)


def rand_augment(images: torch.Tensor, *, num_ops: int, magnitude: int) -> torch.Tensor:
    """torchvision's RandAugment with independent ops per image.  images: (B, C, H, W) uint8."""
    return _each_image(images, v2.RandAugment(num_ops=num_ops, magnitude=magnitude))


def auto_augment(images: torch.Tensor, *, policy: str) -> torch.Tensor:
    """A learned or random policy per image.  images: (B, C, H, W) uint8.

    `autoaugment`: AutoAugment's CIFAR-10 policy (Cubuk et al., 2019); `trivialaugment`:
    TrivialAugmentWide, one op at a random magnitude (Müller and Hutter, 2021).
    """
    if policy == "autoaugment":
        op = v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)
    elif policy == "trivialaugment":
        op = v2.TrivialAugmentWide()
    else:
        raise ValueError(f"unknown policy {policy!r}; expected one of {AUTO_AUGMENT_POLICIES}")
    return _each_image(images, op)


def _box_mask(
    top: torch.Tensor, left: torch.Tensor, height: torch.Tensor, width: torch.Tensor, h: int, w: int
) -> torch.Tensor:
    """(B, 1, H, W) bool: True inside each image's box (rows top..top+height, clipped to the image)."""
    rows = torch.arange(h, device=top.device)  # (H,)
    cols = torch.arange(w, device=top.device)  # (W,)
    in_rows = (rows >= top[:, None]) & (rows < (top + height)[:, None])  # (B, H)
    in_cols = (cols >= left[:, None]) & (cols < (left + width)[:, None])  # (B, W)
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]  # (B, 1, H, W)


def cutout(
    images: torch.Tensor,
    *,
    size: int,
    fill: tuple[float, ...] = CIFAR10_MEAN,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Cutout (DeVries and Taylor, 2017): one size x size square per image, centred anywhere in
    the image and clipped at its border, filled with `fill` (the dataset mean: the paper's zero
    after normalisation).  images: (B, C, H, W) float in [0, 1]; returns a new tensor."""
    b, c, h, w = images.shape
    dev = images.device
    centre_y = torch.randint(0, h, (b,), device=dev, generator=generator)
    centre_x = torch.randint(0, w, (b,), device=dev, generator=generator)
    side = torch.full((b,), size, device=dev)
    mask = _box_mask(centre_y - size // 2, centre_x - size // 2, side, side, h, w)
    colour = torch.tensor(fill, dtype=images.dtype, device=dev).view(1, c, 1, 1)
    return torch.where(mask, colour, images)


def random_erasing(
    images: torch.Tensor,
    *,
    probability: float,
    scale: tuple[float, float] = (0.02, 0.4),
    ratio: tuple[float, float] = (0.3, 1 / 0.3),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random erasing (Zhong et al., 2020): with `probability`, one box per image of a random
    area (`scale` of the image) and aspect (`ratio`, drawn log-uniformly), inside the image,
    filled with uniform noise.  images: (B, C, H, W) float in [0, 1]; returns a new tensor.

    Batched: a box taller or wider than the image is clipped to it, where the paper draws again.
    """
    b, _, h, w = images.shape
    dev = images.device
    uniform = torch.rand((4, b), device=dev, generator=generator)  # area, aspect, top, left
    area = h * w * (scale[0] + (scale[1] - scale[0]) * uniform[0])
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_low + (log_high - log_low) * uniform[1])
    height = torch.sqrt(area * aspect).round().clamp(1, h).long()
    width = torch.sqrt(area / aspect).round().clamp(1, w).long()
    top = (uniform[2] * (h - height + 1)).long()
    left = (uniform[3] * (w - width + 1)).long()
    mask = _box_mask(top, left, height, width, h, w)
    chosen = torch.rand(b, device=dev, generator=generator) < probability
    mask &= chosen.view(b, 1, 1, 1)
    noise = torch.rand(images.shape, dtype=images.dtype, device=dev, generator=generator)
    return torch.where(mask, noise, images)


def augment_batch(
    images: torch.Tensor,
    *,
    crop_padding: int = 4,
    hflip: bool = True,
    randaugment_ops: int = 0,
    randaugment_magnitude: int = 9,
    auto_augment_policy: str | None = None,
    cutout_size: int = 0,
    random_erasing_probability: float = 0.0,
) -> torch.Tensor:
    """Training augmentation on a uint8 batch: (B, H, W, C) -> (B, C, H, W) float in [0, 1].

    In order: random crop with zero padding and horizontal flip; RandAugment (when
    randaugment_ops > 0) or the policy `auto_augment_policy` (autoaugment | trivialaugment);
    then, on the float batch, Cutout (when cutout_size > 0) and random erasing (when
    random_erasing_probability > 0). AutoAugment's paper applied its policy in the same
    place, after crop and flip and before Cutout.
    """
    x = random_crop_flip(images, crop_padding, hflip=hflip)  # (B, H, W, C) uint8
    if randaugment_ops > 0 or auto_augment_policy is not None:
        x = x.permute(0, 3, 1, 2).contiguous()  # (B, C, H, W) uint8
        if randaugment_ops > 0:
            x = rand_augment(x, num_ops=randaugment_ops, magnitude=randaugment_magnitude)
        else:
            x = auto_augment(x, policy=auto_augment_policy)
        x = x.float().div_(255.0)  # (B, C, H, W)
    else:
        x = to_float_chw(x)
    if cutout_size > 0:
        x = cutout(x, size=cutout_size)
    if random_erasing_probability > 0:
        x = random_erasing(x, probability=random_erasing_probability)
    return x
