"""The MAE decoder (the paper, section 3, "MAE decoder").

project -> append mask tokens -> unshuffle -> add positions -> blocks -> norm -> pixel head.
It is only used during pre-training, so it can be small (Table 1a, 1b). Pre-training itself takes a
shorter, equivalent path that predicts the hidden patches only (`mae.hidden`).
"""

from __future__ import annotations

import torch
from torch import nn

from .config import MAEConfig
from .layers import Block
from .masking import gather_tokens
from .pos_embed import sincos_2d


class Decoder(nn.Module):
    def __init__(self, config: MAEConfig) -> None:
        super().__init__()
        Dd = config.decoder_dim
        self.num_prefix = config.num_prefix  # T: 1 with a CLS token, else 0
        self.embed = nn.Linear(config.encoder_dim, Dd)
        # With mask tokens in the encoder, the decoder receives all L tokens and needs none.
        self.mask_token = None if config.encoder_mask_tokens else nn.Parameter(torch.zeros(1, 1, Dd))
        self.register_buffer(
            "pos_embed", sincos_2d(Dd, config.grid_size, cls_token=True).unsqueeze(0),
            persistent=False,
        )  # (1, 1 + L, Dd)
        self.blocks = nn.ModuleList(
            Block(Dd, config.decoder_heads, config.mlp_ratio, config.qkv_bias, config.layer_norm_eps)
            for _ in range(config.decoder_layers)
        )
        self.norm = nn.LayerNorm(Dd, eps=config.layer_norm_eps)
        self.pred = nn.Linear(Dd, config.patch_dim)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Predict every patch's pixels.

        Args:
            latent: (B, T + K, D) encoder output (the CLS token first when the model has one,
                T = 1, else T = 0; then the visible tokens in shuffled order), or (B, T + L, D)
                in original order when the encoder kept mask tokens.
            ids_restore: (B, L) from the masking step.

        Returns:
            (B, L, P) predicted patches in the original patch order.
        """
        x = self.embed(latent)  # (B, T + K, Dd)
        B, N, Dd = x.shape
        T = self.num_prefix
        L = ids_restore.shape[1]
        if self.mask_token is not None:
            tokens = torch.cat([x[:, T:], self.mask_token.expand(B, L + T - N, Dd)], dim=1)  # (B, L, Dd)
            tokens = gather_tokens(tokens, ids_restore)  # (B, L, Dd) in patch order
            x = torch.cat([x[:, :T], tokens], dim=1)  # (B, T + L, Dd)
        x = x + self.pos_embed[:, 1 - T:]  # (B, T + L, Dd)
        for block in self.blocks:
            x = block(x)
        return self.pred(self.norm(x[:, T:]))  # (B, L, P) without the CLS token
