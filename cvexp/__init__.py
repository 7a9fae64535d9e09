"""cvexp: a PyTorch Lightning + Hydra experiment framework for CIFAR-10 classification."""

__version__ = "0.1.0"
