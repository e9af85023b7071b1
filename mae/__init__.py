"""Masked Autoencoders (He et al., CVPR 2022) in small, tested PyTorch modules."""

from .config import PRESETS, ConfigError, MAEConfig
from .masking import Masking, random_masking, sample_noise
from .model import MAE, MAEOutput
from .patches import patchify, unpatchify
from .pos_embed import sincos_2d
from . import pretrained  # noqa: E402  (mae.pretrained.load("micro-cifar10"))

__version__ = "0.1.0"

__all__ = [
    "MAE", "MAEConfig", "MAEOutput", "ConfigError", "PRESETS", "Masking", "patchify",
    "unpatchify", "random_masking", "sample_noise", "sincos_2d", "pretrained",
    "__version__",
]
