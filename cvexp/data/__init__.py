"""CIFAR-10 data: file formats, the LightningDataModule and batched augmentation."""

from cvexp.data.datamodule import CIFAR10DataModule
from cvexp.data.formats import CLASSES

__all__ = ["CLASSES", "CIFAR10DataModule"]
