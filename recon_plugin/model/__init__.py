"""The RGANCS networks: ResNet proximal, recurrent unrolled net, LSGAN discriminator, bundles."""

from .bundle import Bundle, load_bundle, save_bundle
from .discriminator import Discriminator
from .proximal import ResidualBlock, ResNetProximal
from .recurrent import ModelConfig, RecurrentProximalNet

__all__ = [
    "Bundle",
    "Discriminator",
    "ModelConfig",
    "RecurrentProximalNet",
    "ResNetProximal",
    "ResidualBlock",
    "load_bundle",
    "save_bundle",
]
