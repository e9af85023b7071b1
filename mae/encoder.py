"""The MAE encoder: a ViT that sees only the visible patches (the paper, section 3, "MAE encoder").

embed patches -> add positions -> keep the visible ones -> prepend CLS -> blocks -> norm.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .config import MAEConfig
from .layers import Block
from .masking import random_masking, sample_noise
from .pos_embed import sincos_2d


class EncoderOutput(NamedTuple):
    latent: torch.Tensor  # (B, 1 + K, D): CLS then the visible tokens (or 1 + L with mask tokens)
    mask: torch.Tensor  # (B, L) 1 = hidden, 0 = visible
    ids_restore: torch.Tensor  # (B, L)


class PatchEmbed(nn.Module):
    """Linear projection of each p x p patch, written as a strided convolution."""

    def __init__(self, patch_size: int, in_chans: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, L, D)."""
        return self.proj(images).flatten(2).transpose(1, 2)  # (B, L, D)


class Encoder(nn.Module):
    def __init__(self, config: MAEConfig, drop_path: float = 0.0) -> None:
        super().__init__()
        self.config = config
        D = config.encoder_dim
        self.patch_embed = PatchEmbed(config.patch_size, config.in_chans, D)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        # Table 1c / Table 2 variant: hidden patches enter the encoder as a learned mask token.
        self.mask_token = nn.Parameter(torch.zeros(1, 1, D)) if config.encoder_mask_tokens else None
        # Fixed, not learned (appendix A.1); a buffer outside the state dict, rebuilt from config.
        self.register_buffer(
            "pos_embed", sincos_2d(D, config.grid_size, cls_token=True).unsqueeze(0),
            persistent=False,
        )  # (1, 1 + L, D)
        # Stochastic depth (fine-tuning only) grows linearly with depth, up to drop_path.
        n = config.encoder_layers
        rates = [drop_path * i / max(1, n - 1) for i in range(n)]
        self.blocks = nn.ModuleList(
            Block(D, config.encoder_heads, config.mlp_ratio, config.qkv_bias,
                  config.layer_norm_eps, rate)
            for rate in rates
        )
        self.norm = nn.LayerNorm(D, eps=config.layer_norm_eps)

    def forward(
        self, images: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> EncoderOutput:
        """Encode the visible patches of (B, C, H, W) images; see `EncoderOutput` for shapes."""
        x = self.patch_embed(images)  # (B, L, D)
        B, L, _ = x.shape
        # Positions are added before tokens are dropped, so each kept token carries its own.
        x = x + self.pos_embed[:, 1:]  # (B, L, D)
        if noise is None and mask_ratio == 0:  # nothing hidden: keep the original order
            noise = torch.arange(L, device=x.device, dtype=torch.float32).expand(B, L)
        elif noise is None and self.config.mask_sampling != "random":
            noise = sample_noise(self.config.mask_sampling, B, self.config.grid_size, mask_ratio,
                                 x.device, generator)
        masking = random_masking(x, mask_ratio, noise, generator)
        if self.mask_token is None:
            x = masking.visible  # (B, K, D)
        else:
            hidden = masking.mask.unsqueeze(-1).bool()  # (B, L, 1)
            x = torch.where(hidden, self.mask_token + self.pos_embed[:, 1:], x)  # (B, L, D)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(B, -1, -1)  # (B, 1, D)
        x = torch.cat([cls, x], dim=1)  # (B, 1 + K, D)
        for block in self.blocks:
            x = block(x)
        return EncoderOutput(self.norm(x), masking.mask, masking.ids_restore)
