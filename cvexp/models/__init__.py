"""Pure torch networks: no Lightning, Hydra or TensorBoard imports here."""

from cvexp.models.vgg import VGG

__all__ = ["VGG"]
