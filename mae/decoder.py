"""The MAE decoder (the paper, section 3, "MAE decoder").

project -> append mask tokens -> unshuffle -> add positions -> blocks -> norm -> pixel head.
It is only used during pre-training, so it can be small (Table 1a, 1b).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
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

    def forward_hidden(
        self, latent: torch.Tensor, ids_restore: torch.Tensor, num_visible: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict the hidden patches only (the loss needs nothing else): the same values as
        ``forward`` at those patches, with less work.

        - The blocks are permutation-equivariant (positions enter only through the added
          embedding), so the tokens stay in masking order -- CLS, the K visible, then the L - K
          hidden -- instead of being put back in patch order: no unshuffle.
        - A mask token is one learned vector plus its position's embedding, so the first block
          projects each position's mask token once per batch, not once per sample
          (`Block.forward_table_tail`).
        - Every block but the last runs on all T + L tokens (they are the keys and values of
          the next); the last block's queries, its MLP and the pixel head run on the hidden
          tail alone.

        Args:
            latent, ids_restore: as for ``forward``.
            num_visible: K, the number of visible patches per sample (`mae.config.num_visible`).

        Returns:
            ``(pred, hidden)``: (B, L - K, P) predictions for the patches ``hidden`` (B, L - K),
            the hidden patch indices in masking order.
        """
        K, T = num_visible, self.num_prefix
        x = self.embed(latent)  # (B, T + K, Dd), or (B, T + L, Dd) with encoder mask tokens
        B = x.shape[0]
        ids_shuffle = ids_restore.argsort(dim=1)  # (B, L) masking order: the first K are kept
        hidden = ids_shuffle[:, K:]  # (B, L - K)
        pos = self.pos_embed[0]  # (1 + L, Dd): the CLS token's row, then patch p's at p + 1
        blocks = list(self.blocks)
        if self.mask_token is None:  # all L tokens came from the encoder, in patch order
            x = x + pos[1 - T:]  # (B, T + L, Dd)
            queries: torch.Tensor | int = hidden + T
        else:
            order = ids_shuffle[:, :K] + 1  # (B, K) rows of pos
            if T:
                order = torch.cat([order.new_zeros(B, 1), order], dim=1)  # (B, 1 + K)
            x = x + F.embedding(order, pos)  # (B, T + K, Dd) CLS and visible, positioned
            table = self.mask_token[0] + pos[1:]  # (L, Dd) the mask token at every position
            if len(blocks) > 1:
                x = blocks.pop(0).forward_table_tail(x, table, hidden)  # (B, T + L, Dd)
            else:
                x = torch.cat([x, F.embedding(hidden, table)], dim=1)  # (B, T + L, Dd)
            queries = T + K  # the hidden tail
        for block in blocks[:-1]:
            x = block(x)
        x = blocks[-1](x, queries=queries)  # (B, L - K, Dd)
        return self.pred(self.norm(x)), hidden
