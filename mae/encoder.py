"""The MAE encoder: a ViT that sees only the visible patches (the paper, section 3, "MAE encoder").

keep the visible patches -> embed them, add their positions -> prepend CLS -> blocks -> norm.
(T, below, is the number of tokens before the patch tokens: 1 for the CLS token, 0 without.)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import MAEConfig
from .layers import Block
from .masking import random_masking, sample_noise
from .patches import patchify
from .pos_embed import sincos_2d


class EncoderOutput(NamedTuple):
    latent: torch.Tensor  # (B, T + K, D): CLS then the visible tokens (or T + L with mask tokens)
    mask: torch.Tensor  # (B, L) 1 = hidden, 0 = visible
    ids_restore: torch.Tensor  # (B, L)


class PatchEmbed(nn.Module):
    """Linear projection of each p x p patch.

    The weights are those of a strided convolution (the reference's layout, so checkpoints
    convert as they are), but the projection is applied as a matrix to patchified pixels: the
    encoder then embeds only the patches it keeps, a quarter of them at 75 % masking.
    """

    def __init__(self, patch_size: int, in_chans: int, dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, L, D)."""
        return self.embed(patchify(images, self.patch_size))

    def embed(self, patches: torch.Tensor) -> torch.Tensor:
        """Patchified pixels (B, N, p * p * C), `patchify`'s layout -> (B, N, D)."""
        w = self.proj.weight  # (D, C, p, p)
        return F.linear(patches, w.permute(0, 2, 3, 1).reshape(w.shape[0], -1), self.proj.bias)


class Encoder(nn.Module):
    def __init__(self, config: MAEConfig, drop_path: float = 0.0) -> None:
        super().__init__()
        self.config = config
        D = config.encoder_dim
        self.patch_embed = PatchEmbed(config.patch_size, config.in_chans, D)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D)) if config.cls_token else None
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

    def check_images(self, images: Any) -> None:
        """Raise a ValueError (TypeError for a non-tensor) naming what is wrong unless images is a
        non-empty float (B, C, H, W) batch of the model's channels and size, in the weights'
        dtype or under autocast: the check of `MAE.forward`, `MAE.features` and the fine-tuning
        `Classifier`."""
        c = self.config
        expected = f"(B, {c.in_chans}, {c.img_size}, {c.img_size})"
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor of shape {expected}, got "
                            f"{type(images).__name__}.")
        if images.ndim != 4:
            raise ValueError(f"images must have shape {expected}, got {tuple(images.shape)}; "
                             f"add a batch dimension with images.unsqueeze(0) for one image.")
        if not images.is_floating_point():
            raise ValueError(f"images must be a floating-point tensor, got {images.dtype}: convert "
                             f"uint8 pixels with images.float() / 255 (and normalise).")
        weights = self.patch_embed.proj.weight.dtype
        if images.dtype != weights and not torch.is_autocast_enabled(images.device.type):
            raise ValueError(f"images are {images.dtype} but the model's weights are {weights}: "
                             f"convert the batch with images.to({weights}) (or the model with "
                             f"model.to({images.dtype})), or run under torch.autocast.")
        B, C, H, W = images.shape
        if B == 0:
            raise ValueError(f"images is an empty batch {tuple(images.shape)}: pass at least one "
                             f"image, {expected}.")
        if C != c.in_chans:
            hint = " (channels-last? use images.permute(0, 3, 1, 2))" if W == c.in_chans else ""
            raise ValueError(f"images have {C} channels but the model expects in_chans="
                             f"{c.in_chans}: shape {tuple(images.shape)}, expected {expected}{hint}.")
        if (H, W) != (c.img_size, c.img_size):
            raise ValueError(f"images are {H}x{W} but the model expects img_size={c.img_size}: "
                             f"resize or crop to {c.img_size}x{c.img_size}, or build the model "
                             f"with img_size={H} if H == W.")

    def forward(
        self, images: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> EncoderOutput:
        """Encode the visible patches of (B, C, H, W) images; see `EncoderOutput` for shapes."""
        patches = patchify(images, self.config.patch_size)  # (B, L, p * p * C)
        B, L, _ = patches.shape
        if noise is None and mask_ratio == 0:  # nothing hidden: keep the original order
            noise = torch.arange(L, device=images.device, dtype=torch.float32).expand(B, L)
        elif noise is None and self.config.mask_sampling != "random":
            noise = sample_noise(self.config.mask_sampling, B, self.config.grid_size, mask_ratio,
                                 images.device, generator)
        masking = random_masking(patches, mask_ratio, noise, generator)
        pos = self.pos_embed[0, 1:]  # (L, D)
        if self.mask_token is None:
            # Embed only the kept patches; each carries its own position (the same values as
            # embedding all, adding positions, then dropping the hidden tokens).
            x = self.patch_embed.embed(masking.visible) + pos[masking.ids_keep]  # (B, K, D)
        else:
            x = self.patch_embed.embed(patches) + pos  # (B, L, D)
            hidden = masking.mask.unsqueeze(-1).bool()  # (B, L, 1)
            x = torch.where(hidden, self.mask_token + pos, x)  # (B, L, D)
        if self.cls_token is not None:
            cls = (self.cls_token + self.pos_embed[:, :1]).expand(B, -1, -1)  # (B, 1, D)
            x = torch.cat([cls, x], dim=1)  # (B, 1 + K, D)
        for block in self.blocks:
            x = block(x)
        return EncoderOutput(self.norm(x), masking.mask, masking.ids_restore)
