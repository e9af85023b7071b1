"""The MAE decoder (the paper, section 3, "MAE decoder").

project -> append mask tokens -> unshuffle -> add positions -> blocks -> norm -> pixel head.
It is only used during pre-training, so it can be small (Table 1a, 1b).
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

    def forward(
        self, latent: torch.Tensor, ids_restore: torch.Tensor, only: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict every patch's pixels, or only those of the patches in ``only``.

        Args:
            latent: (B, 1 + K, D) encoder output (CLS first, visible tokens in shuffled order),
                or (B, 1 + L, D) in original order when the encoder kept mask tokens.
            ids_restore: (B, L) from the masking step.
            only: optional (B, M) patch indices. The loss needs only the hidden patches, so
                training passes them: every block but the last still runs on all 1 + L tokens
                (they are the keys and values of the next), while the last block's queries, MLP
                and the pixel head run on the M wanted tokens alone. Same values, less work.

        Returns:
            (B, L, P) predicted patches in the original patch order, or (B, M, P) in the order
            of ``only``.
        """
        x = self.embed(latent)  # (B, 1 + K, Dd)
        B, N, Dd = x.shape
        L = ids_restore.shape[1]
        if self.mask_token is not None:
            tokens = torch.cat([x[:, 1:], self.mask_token.expand(B, L + 1 - N, Dd)], dim=1)  # (B, L, Dd)
            tokens = gather_tokens(tokens, ids_restore)  # (B, L, Dd) in patch order
            x = torch.cat([x[:, :1], tokens], dim=1)  # (B, 1 + L, Dd)
        x = x + self.pos_embed  # (B, 1 + L, Dd)
        if only is None:
            for block in self.blocks:
                x = block(x)
            return self.pred(self.norm(x[:, 1:]))  # (B, L, P) without the CLS token
        for block in self.blocks[:-1]:
            x = block(x)
        x = self.blocks[-1](x, queries=only + 1)  # (B, M, Dd); token 0 is the CLS token
        return self.pred(self.norm(x))  # (B, M, P)
