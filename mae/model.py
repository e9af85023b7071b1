"""MAE: encoder + decoder + loss, behind one call.

>>> model = MAE({"img_size": 32, "patch_size": 4, "encoder_dim": 64, "encoder_layers": 2,
...              "encoder_heads": 4, "decoder_dim": 32, "decoder_layers": 1, "decoder_heads": 4})
>>> loss, pred, mask = model(torch.rand(2, 3, 32, 32))
>>> pred.shape, mask.shape
(torch.Size([2, 64, 48]), torch.Size([2, 64]))
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import nn

from .config import MAEConfig, check_hides_a_patch, check_mask_ratio
from .decoder import Decoder
from .encoder import Encoder
from .layers import init_weights
from .loss import masked_mse, reconstruction_target
from .runtime import STREAM_INIT, seed_for


class MAEOutput(NamedTuple):
    loss: torch.Tensor  # () mean squared error over hidden patches
    pred: torch.Tensor  # (B, L, P) predicted patches (normalised pixels with norm_pix_loss)
    mask: torch.Tensor  # (B, L) 1 = hidden, 0 = visible


class MAE(nn.Module):
    """Masked Autoencoder. Build it from an `MAEConfig` or a plain dict of its fields."""

    def __init__(self, config: MAEConfig | Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.config = MAEConfig.from_dict(config if config is not None else {})
        self.encoder = Encoder(self.config)
        self.decoder = Decoder(self.config)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The paper's initialisation (appendix A.1, following the reference code)."""
        self.apply(init_weights)
        # The patch embedding is a linear map of each patch: initialise it like one.
        w = self.encoder.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        for token in (self.encoder.cls_token, self.encoder.mask_token, self.decoder.mask_token):
            if token is not None:
                nn.init.normal_(token, std=0.02)

    def check_images(self, images: Any) -> None:
        """Raise a ValueError naming what is wrong unless images is a non-empty float (B, C, H, W)
        batch of the model's size (`Encoder.check_images`)."""
        self.encoder.check_images(images)

    def forward(
        self, images: torch.Tensor, mask_ratio: float | None = None,
        noise: torch.Tensor | None = None, generator: torch.Generator | None = None,
    ) -> MAEOutput:
        """Mask, encode, decode and score a batch.

        Args:
            images: (B, C, H, W) float images, normalised as for training.
            mask_ratio: fraction of patches hidden; defaults to ``config.mask_ratio``.
            noise: optional (B, L) masking noise (the K smallest entries are kept), to reproduce
                a mask exactly or compare with another implementation.
            generator: optional torch.Generator for the masking noise.

        Returns:
            `MAEOutput(loss, pred (B, L, P), mask (B, L))`; unpacks like a tuple.
        """
        self.check_images(images)
        c = self.config
        ratio = c.mask_ratio if mask_ratio is None else mask_ratio
        check_mask_ratio(ratio, c.num_patches)
        check_hides_a_patch(ratio, c.num_patches)
        latent, mask, ids_restore = self.encoder(images, ratio, noise, generator)
        pred = self.decoder(latent, ids_restore)  # (B, L, P)
        target = reconstruction_target(images, c.patch_size, c.norm_pix_loss)
        return MAEOutput(masked_mse(pred, target, mask), pred, mask)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Encoder output on all patches (no masking): (B, 1 + L, D), CLS token first ((B, L, D)
        with ``cls_token=False``)."""
        self.check_images(images)
        return self.encoder(images, 0.0).latent


def init_model(config: MAEConfig | Mapping[str, Any], seed: int) -> MAE:
    """The model a run with this seed starts from (also the random-init baseline). The caller's
    global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_for(seed, 0, STREAM_INIT))
        return MAE(config)
