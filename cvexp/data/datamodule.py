"""The CIFAR-10 LightningDataModule: decode once, keep uint8 tensors, gather whole batches."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from cvexp.data.augment import AUTO_AUGMENT_POLICIES, augment_batch, to_float_chw
from cvexp.data.download import OFFICIAL_URL, download_official
from cvexp.data.formats import CLASSES, Cifar10Tensors, Source, find_source, read_source
from cvexp.data.mixing import BatchMixer
from cvexp.errors import UserError
from cvexp.run_record import current_umask

log = logging.getLogger(__name__)

OFFICIAL_TRAIN_SIZE = 50_000
CACHE_DIR = ".cvexp_cache"


class BatchGather(Dataset):
    """A dataset indexed by a whole list of indices: one fancy-index gather per batch."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> None:
        self.images, self.labels, self.indices = images, labels, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, positions: torch.Tensor | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.indices[torch.as_tensor(positions)].to(self.images.device, non_blocking=True)
        # index_select: many times faster than images[rows] for a batch of whole images
        images = self.images.index_select(0, rows)  # (B, 32, 32, 3) uint8
        return images, self.labels.index_select(0, rows)  # (B,) int64

    def __getitems__(
        self, positions: torch.Tensor | list[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole batch, for a DataLoader with a batch_sampler (the overfit_batches loaders)."""
        return self[positions]


def _whole_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The collate_fn of a batch that BatchGather already gathered: the batch as it is."""
    return batch


class ShardedBatchSampler:
    """Yields (B,) int64 tensors of positions: this rank's share of a seeded per-epoch permutation.

    Every rank draws the same permutation from `seed + epoch`, then takes every
    `world_size`-th element, so ranks see disjoint data and a resumed run sees the same
    order. Evaluation (`shuffle=False, drop_last=False`) is not padded: ranks may get one
    batch fewer, and metrics sync their own counts, so no sample is counted twice.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        *,
        shuffle: bool,
        drop_last: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.size, self.batch_size, self.shuffle, self.drop_last = (
            size,
            batch_size,
            shuffle,
            drop_last,
        )
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = epoch

    def _positions(self) -> torch.Tensor:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=generator)
        else:
            order = torch.arange(self.size)
        if self.drop_last:  # every rank gets the same number of samples
            order = order[: self.size - self.size % self.world_size]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[torch.Tensor]:
        positions = self._positions()
        for batch in positions.split(self.batch_size):
            if self.drop_last and len(batch) < self.batch_size:
                return
            yield batch  # (B,) int64 positions

    def __len__(self) -> int:
        n = len(self._positions())
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


class FixedBatchSampler(ShardedBatchSampler):
    """A ShardedBatchSampler that yields the same batches every epoch (the first epoch's), for
    trainer.overfit_batches: a model should learn those few batches by heart."""

    def set_epoch(self, epoch: int) -> None:
        """Ignored: every epoch draws epoch 0's permutation."""


def stratified_split(
    labels: torch.Tensor, val_size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices into (train, val), with `val_size` val images spread over classes in proportion.

    Per-class counts follow the largest-remainder rule, so they sum to exactly `val_size`.
    The result depends only on the labels, `val_size` and `seed`.
    """
    generator = torch.Generator().manual_seed(seed)
    classes, counts = labels.unique(return_counts=True)
    quota = counts.double() * val_size / len(labels)
    take = quota.floor().long()
    remainder_order = torch.argsort(quota - take, descending=True, stable=True)
    take[remainder_order[: val_size - int(take.sum())]] += 1
    val_parts = []
    for cls, n_val in zip(classes.tolist(), take.tolist(), strict=True):
        members = (labels == cls).nonzero().squeeze(1)
        val_parts.append(members[torch.randperm(len(members), generator=generator)[:n_val]])
    val = torch.cat(val_parts).sort().values
    is_val = torch.zeros(len(labels), dtype=torch.bool)
    is_val[val] = True
    return (~is_val).nonzero().squeeze(1), val


def stratified_folds(labels: torch.Tensor, folds: int, seed: int) -> list[torch.Tensor]:
    """Split indices into `folds` disjoint folds that cover them, each class dealt out evenly.

    Each class's images are shuffled (seeded) and dealt round the folds, starting where the
    previous class stopped, so that a class's count in two folds, and two folds' sizes, differ
    by at most 1. The result depends only on the labels, `folds` and `seed`; each fold is sorted.
    """
    generator = torch.Generator().manual_seed(seed)
    fold_of = torch.empty(len(labels), dtype=torch.int64)
    dealt = 0
    for cls in labels.unique().tolist():
        members = (labels == cls).nonzero().squeeze(1)
        shuffled = members[torch.randperm(len(members), generator=generator)]
        fold_of[shuffled] = (dealt + torch.arange(len(members))) % folds
        dealt += len(members)
    return [(fold_of == k).nonzero().squeeze(1) for k in range(folds)]


def kfold_split(
    labels: torch.Tensor, folds: int, fold: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices into (train, val): fold `fold` of `stratified_folds` is val, the rest train."""
    val = stratified_folds(labels, folds, seed)[fold]
    is_val = torch.zeros(len(labels), dtype=torch.bool)
    is_val[val] = True
    return (~is_val).nonzero().squeeze(1), val


class CIFAR10DataModule(L.LightningDataModule):
    """CIFAR-10 from any supported format, as uint8 tensors, with a seeded stratified val split.

    The val split is `val_size` images held out of the official train set or, with `folds=K`,
    fold `fold` of K seeded stratified folds of it (k-fold cross-validation: `val_size` is then
    not used); the official test set is the test set either way.

    `batch_size` is the global batch: under DDP each rank gets `batch_size // world_size`.
    Training batches are augmented (random crop with padding, horizontal flip, and the
    regularisers that are switched on) on the device, in `on_after_batch_transfer`;
    validation and test batches are not. With Mixup or CutMix the training labels become soft
    targets (B, 10) that sum to 1.

    `on_device=True` copies the uint8 dataset (180 MB) to the accelerator once, so batches
    are gathered there: no host-to-device copies, no worker processes. On the CPU it
    changes nothing, since the data is already where the model is.
    """

    def __init__(
        self,
        root: str = "./data",
        *,
        download: bool = True,
        val_size: int = 5000,
        folds: int | None = None,
        fold: int = 0,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = True,
        on_device: bool = False,
        seed: int = 42,
        crop_padding: int = 4,
        hflip: bool = True,
        randaugment_ops: int = 0,
        randaugment_magnitude: int = 9,
        auto_augment: str | None = None,
        cutout: int = 0,
        random_erasing: float = 0.0,
        mixup_alpha: float | None = None,
        cutmix_alpha: float | None = None,
        cache: bool = True,
        download_url: str = OFFICIAL_URL,
    ) -> None:
        super().__init__()
        _check_folds(folds, fold)
        if folds is None:  # k-fold cross-validation does not use val_size
            _require_int("data.val_size", val_size, low=1, high=OFFICIAL_TRAIN_SIZE - 1)
        _require_int("data.batch_size", batch_size, low=1)
        if eval_batch_size is not None:
            _require_int("data.eval_batch_size", eval_batch_size, low=1)
        _require_int("data.num_workers", num_workers, low=0)
        _require_int("data.crop_padding", crop_padding, low=0)
        _require_int("data.randaugment_ops", randaugment_ops, low=0)
        _require_int("data.randaugment_magnitude", randaugment_magnitude, low=0, high=30)
        _require_int("seed", seed)
        _check_regularisers(
            randaugment_ops=randaugment_ops,
            auto_augment=auto_augment,
            cutout=cutout,
            random_erasing=random_erasing,
            mixup_alpha=mixup_alpha,
            cutmix_alpha=cutmix_alpha,
        )
        if on_device and num_workers > 0:
            raise UserError(
                f"data.on_device=true gathers batches on the accelerator itself, so worker "
                f"processes cannot help; set data.num_workers=0 (got {num_workers})."
            )
        self.save_hyperparameters(logger=False)
        self.root = Path(os.path.expanduser(str(root))).resolve()
        self.data: Cifar10Tensors | None = None
        self.train_indices: torch.Tensor | None = None
        self.val_indices: torch.Tensor | None = None
        self.classes = CLASSES
        self.num_classes = len(CLASSES)
        self._device_copies: dict[int, torch.Tensor] = {}  # id(host tensor) -> device copy
        self.mixer = (
            BatchMixer(
                num_classes=self.num_classes, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha
            )
            if mixup_alpha is not None or cutmix_alpha is not None
            else None
        )

    # ---------------------------------------------------------------- preparing and caching

    def prepare_data(self) -> None:
        """Find (or download) the dataset and decode it into the cache; runs on one process per node."""
        source = self._locate()
        if self.hparams.cache:
            self._load_or_build_cache(source)

    def _locate(self) -> Source:
        source = find_source(self.root)
        if source is not None:
            return source
        if not self.hparams.download:
            raise UserError(
                f"No CIFAR-10 found at {self.root}; set data.root (or CVEXP_DATA) to a folder that "
                "holds it, or pass data.download=true to fetch it."
            )
        download_official(self.root, url=self.hparams.download_url)
        return find_source(self.root)

    def _cache_path(self, source: Source) -> Path:
        return self.root / CACHE_DIR / f"{source.kind}-{source.fingerprint()}.pt"

    def _load_or_build_cache(self, source: Source) -> Cifar10Tensors:
        path = self._cache_path(source)
        if path.is_file():
            try:
                # mmap: ranks on one node share the page cache instead of holding a copy each
                tensors = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                return Cifar10Tensors(**tensors)
            except Exception:
                warnings.warn(
                    f"Ignoring the unreadable cache {path}; decoding again.", stacklevel=2
                )
        data = _decode(source, path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
                torch.save(data.as_dict(), tmp)
            os.chmod(tmp.name, 0o666 & ~current_umask())  # as a plain open would, not 0600
            os.replace(tmp.name, path)  # atomic: a concurrent reader never sees half a file
        except OSError as err:
            warnings.warn(
                f"Could not write the decoded-data cache in {path.parent} ({err}); "
                "decoding again next time.",
                stacklevel=2,
            )
        return data

    # ---------------------------------------------------------------- setup and split

    def setup(self, stage: str | None = None) -> None:
        """Load the decoded tensors; for fit/validate, make the split (identical on every rank and resume)."""
        if self.data is None:
            source = self._locate()
            self.data = self._load_or_build_cache(source) if self.hparams.cache else _decode(source)
            # evaluation order: a fixed shuffle, so that limit_test_batches sees every class
            self.test_order = torch.randperm(
                len(self.data.test_labels), generator=torch.Generator().manual_seed(0)
            )
        if stage in (None, "fit", "validate") and self.val_indices is None:
            self._make_split()

    def _make_split(self) -> None:
        labels, folds = self.data.train_labels, self.hparams.folds
        if folds is not None:
            _check_folds_fit(labels, folds)
            self.train_indices, self.val_indices = kfold_split(
                labels, folds, self.hparams.fold, self.hparams.seed
            )
        else:
            n_train = len(labels)
            if self.hparams.val_size >= n_train:
                raise UserError(
                    f"data.val_size={self.hparams.val_size} leaves no training images (the train "
                    f"set has {n_train}); choose a value between 1 and {n_train - 1}."
                )
            self.train_indices, self.val_indices = stratified_split(
                labels, self.hparams.val_size, self.hparams.seed
            )
        mix = torch.Generator().manual_seed(0)
        self.val_order = self.val_indices[torch.randperm(len(self.val_indices), generator=mix)]

    def split_record(self) -> dict[str, Any]:
        """What identifies the validation split: its size, seed, the cross-validation fold
        (folds and fold; both None for the val_size split) and a hash of its indices."""
        if self.val_indices is None:
            return {}
        digest = hashlib.sha256(self.val_indices.to(torch.int64).numpy().tobytes()).hexdigest()
        folds = self.hparams.folds
        return {
            "val_size": len(self.val_indices),
            "train_size": len(self.train_indices),
            "test_size": len(self.data.test_labels),
            "seed": self.hparams.seed,
            "folds": folds,
            "fold": None if folds is None else self.hparams.fold,
            "val_indices_sha256": digest,
        }

    # ---------------------------------------------------------------- loaders

    def per_device_batch_size(self, world_size: int) -> int:
        """The global batch divided over ranks; an error when it does not divide evenly."""
        if self.hparams.batch_size % world_size:
            raise UserError(
                f"data.batch_size={self.hparams.batch_size} is not divisible by the "
                f"{world_size} devices; choose a multiple of {world_size}."
            )
        return self.hparams.batch_size // world_size

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _on_accelerator(self, tensor: torch.Tensor) -> torch.Tensor:
        """With data.on_device, the copy of `tensor` on the trainer's accelerator (made once)."""
        trainer = self.trainer
        if not self.hparams.on_device or trainer is None:
            return tensor
        device = trainer.strategy.root_device
        if device.type == "cpu":
            return tensor
        if id(tensor) not in self._device_copies:
            self._device_copies[id(tensor)] = tensor.to(device)
        return self._device_copies[id(tensor)]

    def _loader(
        self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor, *, train: bool
    ) -> DataLoader:
        images, labels = self._on_accelerator(images), self._on_accelerator(labels)
        on_host = images.device.type == "cpu"
        rank, world = self._rank_and_world()
        batch = self.per_device_batch_size(world)
        if not train and self.hparams.eval_batch_size is not None:
            batch = self.hparams.eval_batch_size
        overfit = self.trainer is not None and self.trainer.overfit_batches > 0
        sampler = (FixedBatchSampler if overfit else ShardedBatchSampler)(
            len(indices),
            batch,
            shuffle=train,
            drop_last=train,
            seed=self.hparams.seed,
            rank=rank,
            world_size=world,
        )
        loader_options: dict[str, Any] = {
            "num_workers": self.hparams.num_workers,
            "pin_memory": on_host and self.hparams.pin_memory and torch.cuda.is_available(),
            "persistent_workers": self.hparams.num_workers > 0,
        }
        dataset = BatchGather(images, labels, indices)
        if overfit:
            # With overfit_batches, Lightning replaces a loader's `sampler` that is not a
            # SequentialSampler by one over single images (batches of 1). Passed as the
            # batch_sampler, ours leaves DataLoader's own SequentialSampler in `sampler`.
            return DataLoader(
                dataset, batch_sampler=sampler, collate_fn=_whole_batch, **loader_options
            )
        # the sampler yields whole batches of positions
        return DataLoader(dataset, sampler=sampler, batch_size=None, **loader_options)

    def train_dataloader(self) -> DataLoader:
        """Shuffled, augmented on the device, last partial batch dropped."""
        return self._loader(
            self.data.train_images, self.data.train_labels, self.train_indices, train=True
        )

    def val_dataloader(self) -> DataLoader:
        """The held-out part of the official train set, in order, not augmented."""
        return self._loader(
            self.data.train_images, self.data.train_labels, self.val_order, train=False
        )

    def test_dataloader(self) -> DataLoader:
        """The official 10,000-image test set, in order, not augmented."""
        return self._loader(
            self.data.test_images, self.data.test_labels, self.test_order, train=False
        )

    def predict_dataloader(self) -> DataLoader:
        """The official test set, as for testing."""
        return self.test_dataloader()

    def on_after_batch_transfer(
        self, batch: Any, dataloader_idx: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (B, H, W, C) -> float (B, C, H, W) in [0, 1], augmented only while training."""
        if isinstance(batch, torch.Tensor):
            # not a batch of ours: Lightning's model summary sends the model's
            # example_input_array through this hook, already as the model takes it
            return batch
        images, labels = batch
        if self.trainer is not None and self.trainer.training:
            return self.training_batch(images, labels)
        return to_float_chw(images), labels

    def training_batch(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A uint8 (B, H, W, C) batch and its (B,) labels as training sees them: augmented float
        images (B, C, H, W), and labels (B,) or, with Mixup/CutMix, soft targets (B, 10)."""
        images = self.to_model_input(images, train=True)
        if self.mixer is None:
            return images, labels
        return self.mixer(images, labels)

    def to_model_input(self, images: torch.Tensor, *, train: bool) -> torch.Tensor:
        """A uint8 (B, H, W, C) batch as the net receives it: (B, C, H, W) float in [0, 1],
        with the training augmentation (all but Mixup/CutMix, which need the labels) when `train`."""
        if not train:
            return to_float_chw(images)
        return augment_batch(
            images,
            crop_padding=self.hparams.crop_padding,
            hflip=self.hparams.hflip,
            randaugment_ops=self.hparams.randaugment_ops,
            randaugment_magnitude=self.hparams.randaugment_magnitude,
            auto_augment_policy=self.hparams.auto_augment,
            cutout_size=self.hparams.cutout,
            random_erasing_probability=self.hparams.random_erasing,
        )


def _decode(source: Source, cache: Path | None = None) -> Cifar10Tensors:
    """Decode a copy of CIFAR-10 (a minute for 60,000 images from image files), saying so."""
    into = f" once into {cache}" if cache is not None else ""
    log.info("Decoding CIFAR-10 from %s%s ...", source.path, into)
    start = time.perf_counter()
    data = read_source(source)
    log.info("Decoding CIFAR-10 done in %.0f s.", time.perf_counter() - start)
    return data


def _check_regularisers(
    *,
    randaugment_ops: int,
    auto_augment: str | None,
    cutout: int,
    random_erasing: float,
    mixup_alpha: float | None,
    cutmix_alpha: float | None,
) -> None:
    """Raise a UserError naming the key and the fix for a regulariser setting that cannot work."""
    if auto_augment is not None and auto_augment not in AUTO_AUGMENT_POLICIES:
        raise UserError(
            f"data.auto_augment={auto_augment} is not a policy; pass autoaugment (the CIFAR-10 "
            "policy), trivialaugment (TrivialAugmentWide) or null for none."
        )
    if auto_augment is not None and randaugment_ops > 0:
        raise UserError(
            f"data.auto_augment={auto_augment} and data.randaugment_ops={randaugment_ops} are two "
            "policies for the same place; keep one (data.randaugment_ops=0 or data.auto_augment=null)."
        )
    _require_int("data.cutout", cutout, low=0, high=32)
    _require_number("data.random_erasing", random_erasing, low=0.0, high=1.0)
    for key, alpha in (("data.mixup_alpha", mixup_alpha), ("data.cutmix_alpha", cutmix_alpha)):
        if alpha is None:
            continue
        if (
            isinstance(alpha, bool)
            or not isinstance(alpha, (int, float))
            or not 0 < alpha < math.inf
        ):
            raise UserError(
                f"{key}={alpha} is not a Beta distribution's alpha; pass a positive, finite number "
                f"(e.g. {key}=1.0), or {key}=null to switch it off."
            )


def _check_folds(folds: Any, fold: Any) -> None:
    """Raise a UserError for a number of folds or a fold that cannot be a cross-validation."""
    if folds is None:
        if fold not in (0, None):
            raise UserError(
                f"data.fold={fold} picks a cross-validation fold, but data.folds is null; pass "
                "the number of folds too (e.g. data.folds=5), or leave data.fold out."
            )
        return
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise UserError(
            f"data.folds={folds} is not a number of cross-validation folds; pass 2 or more "
            "(e.g. data.folds=5), or data.folds=null for the data.val_size split."
        )
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < folds:
        raise UserError(
            f"data.fold={fold} is not one of the {folds} folds; pass data.fold from 0 to "
            f"{folds - 1}."
        )


def _check_folds_fit(labels: torch.Tensor, folds: int) -> None:
    """Raise a UserError when some class has fewer images than folds (a fold would lack it)."""
    classes, counts = labels.unique(return_counts=True)
    smallest = int(counts.argmin())
    images, name = int(counts[smallest]), CLASSES[int(classes[smallest])]
    if folds > images:
        raise UserError(
            f"data.folds={folds} is more folds than the train set's smallest class ({name}, "
            f"{images} images) can spread over; pass data.folds={images} or fewer."
        )


def _require_number(key: str, value: Any, *, low: float, high: float) -> None:
    """Raise a UserError naming `key` unless `value` is a number within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{key} must be a number, got {value!r}; pass e.g. {key}={high}.")
    if not low <= value <= high:
        raise UserError(f"{key}={value} is out of range; it must be between {low} and {high}.")


def _require_int(key: str, value: Any, *, low: int | None = None, high: int | None = None) -> None:
    """Raise a UserError naming `key` unless `value` is an int within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{key} must be an integer, got {value!r}; pass e.g. {key}=128.")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"between {low} and {high}"
        raise UserError(f"{key}={value} is out of range; it must be {bounds}.")
