"""Analytic FLOP counts of an MAE forward pass, per image (one multiply-add = 2 FLOPs).

Counted: the patch embedding, every linear layer and the two attention matrix products.
Not counted: norms, softmax, GELU, additions (a few percent at these widths).
A training step costs about three forward passes (the backward pass is about two).
"""

from __future__ import annotations

from .config import MAEConfig, num_visible


def block_flops(tokens: int, dim: int, mlp_dim: int, queries: int | None = None) -> int:
    """One Transformer block on ``tokens`` tokens of width ``dim``; with ``queries``, only that
    many tokens are computed (keys and values still come from all of them)."""
    q = tokens if queries is None else queries
    # k and v on every token; q, the output projection and the MLP on the computed ones
    linear = 2 * (tokens * 2 * dim * dim + q * (2 * dim * dim + 2 * dim * mlp_dim))
    attention = 2 * 2 * q * tokens * dim  # q k^T and (weights) v
    return linear + attention


def mae_flops(config: MAEConfig, mask_ratio: float | None = None) -> dict[str, int]:
    """Forward FLOPs per image of the encoder, the decoder, and their sum (``total``: every
    patch predicted, what ``model(images)`` computes). ``train_step`` is three times the forward
    pass as training runs it (`mae.hidden`: the decoder's last block and pixel head
    only on the hidden patches, the first block's mask-token projection shared by the batch),
    ``train_decoder`` that pass's decoder share."""
    c = config
    L = c.num_patches
    K = num_visible(L, c.mask_ratio if mask_ratio is None else mask_ratio)
    T = c.num_prefix  # the CLS token, if any
    embedded = L if c.encoder_mask_tokens else K
    encoder = 2 * embedded * c.patch_dim * c.encoder_dim  # the patch embedding
    encoder += c.encoder_layers * block_flops(T + embedded, c.encoder_dim, c.encoder_mlp_dim)
    projection = 2 * (T + embedded) * c.encoder_dim * c.decoder_dim

    block = block_flops(T + L, c.decoder_dim, c.decoder_mlp_dim)
    head = 2 * c.decoder_dim * c.patch_dim  # the pixel head, per predicted patch
    decoder = projection + c.decoder_layers * block + L * head
    train_decoder = decoder
    if K < L:  # the last block's queries and the head only on the L - K hidden patches
        last = block_flops(T + L, c.decoder_dim, c.decoder_mlp_dim, queries=L - K)
        train_decoder = projection + (c.decoder_layers - 1) * block + last + (L - K) * head
        if not c.encoder_mask_tokens and c.decoder_layers > 1:
            # The first block projects the mask tokens once per position and batch
            # (`mae.hidden.block_with_table_tail`), not per image: L rows per batch, not counted.
            train_decoder -= 2 * (L - K) * 3 * c.decoder_dim * c.decoder_dim
    return {"encoder": encoder, "decoder": decoder, "total": encoder + decoder,
            "train_decoder": train_decoder, "train_step": 3 * (encoder + train_decoder)}
