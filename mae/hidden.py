"""The training shortcut: predict only the hidden patches, the only ones the loss looks at.

`MAE.forward` decodes every patch, as the paper describes and the reference code computes. The
loss ignores the visible patches, so pre-training can skip them. Three facts make that exact:

- The decoder's blocks are permutation-equivariant (positions enter only through the added
  embedding), so the tokens can stay in masking order -- CLS, the K visible, then the L - K
  hidden -- instead of being put back in patch order: no unshuffle.
- A mask token is one learned vector plus its position's embedding, so the first block's norm
  and QKV projection of the mask tokens depend on the position only: computed once per position
  for the whole batch, then looked up.
- Every block but the last must run on all tokens (they are the keys and values of the next),
  but the last block's queries, its MLP, the final norm and the pixel head are only needed for
  the hidden tail.

It is built from each block's own submodules and adds no parameters; the loss and every gradient
equal `MAE.forward`'s (tests/test_hidden.py). It removes 3-5 % of a train step's FLOPs
(`mae.flops`); timed on 2 CPU threads (`benchmarks/speedups.py`, "every prediction";
results/benchmarks/cpu-2threads-speedups.md) it ran at 0.94-1.13x the full pass's speed, no
shape faster in both measurements: no saving measured beyond the noise. The book's appendix
"How the training loop is built" (book/training_loop.md) explains it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import check_hides_a_patch, check_mask_ratio, num_visible
from .decoder import Decoder
from .layers import Block, attend, merge_heads, split_heads
from .loss import reconstruction_target
from .masking import gather_tokens
from .model import MAE


def hidden_patch_loss(
    model: MAE, images: torch.Tensor, mask_ratio: float | None = None,
    noise: torch.Tensor | None = None, generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss of ``model(images, ...)`` without predicting the visible patches.

    Takes the arguments of `MAE.forward`; returns ``(loss, mask)``, the loss () and the mask
    (B, L), 1 = hidden.
    """
    model.check_images(images)
    c = model.config
    ratio = c.mask_ratio if mask_ratio is None else mask_ratio
    check_mask_ratio(ratio, c.num_patches)
    check_hides_a_patch(ratio, c.num_patches)
    K = num_visible(c.num_patches, ratio)
    latent, mask, ids_restore = model.encoder(images, ratio, noise, generator)
    pred, hidden = decode_hidden(model.decoder, latent, ids_restore, K)  # (B, L - K, P)
    target = reconstruction_target(images, c.patch_size, c.norm_pix_loss, only=hidden)
    return (pred.float() - target).pow(2).mean(), mask  # = masked_mse over the hidden patches


class HiddenPatchLoss(nn.Module):
    """`hidden_patch_loss` as a module, so that DDP and torch.compile can wrap it."""

    def __init__(self, model: MAE) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        return hidden_patch_loss(self.model, images, **kwargs)


def decode_hidden(
    decoder: Decoder, latent: torch.Tensor, ids_restore: torch.Tensor, K: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`Decoder.forward` at the hidden patches only.

    Args:
        latent, ids_restore: as for `Decoder.forward`.
        K: the number of visible patches per sample.

    Returns:
        ``(pred, hidden)``: (B, L - K, P) predictions for the patches ``hidden`` (B, L - K), the
        hidden patch indices in masking order.
    """
    T = decoder.num_prefix
    x = decoder.embed(latent)  # (B, T + K, Dd), or (B, T + L, Dd) with encoder mask tokens
    B = x.shape[0]
    ids_shuffle = ids_restore.argsort(dim=1)  # (B, L) masking order: the first K are kept
    hidden = ids_shuffle[:, K:]  # (B, L - K)
    pos = decoder.pos_embed[0]  # (1 + L, Dd): the CLS token's row, then patch p's at p + 1
    blocks = list(decoder.blocks)
    if decoder.mask_token is None:  # all L tokens came from the encoder, in patch order
        x = x + pos[1 - T:]  # (B, T + L, Dd)
        queries: torch.Tensor | int = hidden + T
    else:
        order = ids_shuffle[:, :K] + 1  # (B, K) rows of pos
        if T:
            order = torch.cat([order.new_zeros(B, 1), order], dim=1)  # (B, 1 + K)
        x = x + F.embedding(order, pos)  # (B, T + K, Dd) CLS and visible, positioned
        table = decoder.mask_token[0] + pos[1:]  # (L, Dd) the mask token at every position
        if len(blocks) > 1:
            x = block_with_table_tail(blocks.pop(0), x, table, hidden)  # (B, T + L, Dd)
        else:
            x = torch.cat([x, F.embedding(hidden, table)], dim=1)  # (B, T + L, Dd)
        queries = T + K  # the hidden tail
    for block in blocks[:-1]:
        x = block(x)
    x = block_at_queries(blocks[-1], x, queries)  # (B, L - K, Dd)
    return decoder.pred(decoder.norm(x)), hidden


def _attend(block: Block, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The block's attention and output projection from projected q (B, M, D), k, v (B, N, D)."""
    h = block.attn.heads
    out = attend(split_heads(q, h), split_heads(k, h), split_heads(v, h))
    return block.drop_path(block.attn.proj(merge_heads(out)))  # (B, M, D)


def block_at_queries(block: Block, x: torch.Tensor, queries: torch.Tensor | int) -> torch.Tensor:
    """``block(x)`` at some tokens only: a (B, M) index, or an int s for the tokens from s on.
    They attend to all N tokens as before. (B, N, D) -> (B, M, D), in the order of ``queries``."""
    def pick(t: torch.Tensor) -> torch.Tensor:
        return t[:, queries:] if isinstance(queries, int) else gather_tokens(t, queries)

    D = x.shape[-1]
    w, b = block.attn.qkv.weight, block.attn.qkv.bias  # rows: q, k, v
    h = block.norm1(x)  # (B, N, D)
    k, v = F.linear(h, w[D:], None if b is None else b[D:]).chunk(2, dim=-1)  # (B, N, D) each
    q = F.linear(pick(h), w[:D], None if b is None else b[:D])  # (B, M, D)
    y = pick(x) + _attend(block, q, k, v)  # (B, M, D)
    return y + block.drop_path(block.mlp(block.norm2(y)))


def block_with_table_tail(
    block: Block, head: torch.Tensor, table: torch.Tensor, index: torch.Tensor,
) -> torch.Tensor:
    """``block(cat([head, table[index]]))``, with the tail's norm and QKV projection computed
    once per table row instead of once per token.

    Args:
        head: (B, N, D) tokens that differ per sample (CLS and visible tokens).
        table: (T, D) the possible tail tokens (the mask token at each position).
        index: (B, M) rows of ``table`` that follow ``head`` in each sample.

    Returns:
        (B, N + M, D).
    """
    x = torch.cat([head, F.embedding(index, table)], dim=1)  # (B, N + M, D)
    qkv = torch.cat([block.attn.qkv(block.norm1(head)),  # (B, N, 3D)
                     F.embedding(index, block.attn.qkv(block.norm1(table)))], dim=1)
    x = x + _attend(block, *qkv.chunk(3, dim=-1))  # (B, N + M, D)
    return x + block.drop_path(block.mlp(block.norm2(x)))
