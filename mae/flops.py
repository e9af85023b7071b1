"""Analytic FLOP counts of an MAE forward pass, per image (one multiply-add = 2 FLOPs).

Counted: the patch embedding, every linear layer and the two attention matrix products.
Not counted: norms, softmax, GELU, additions (a few percent at these widths).
A training step costs about three forward passes (the backward pass is about two).
"""

from __future__ import annotations

from .config import MAEConfig, num_visible


def block_flops(tokens: int, dim: int, mlp_dim: int) -> int:
    """One Transformer block on ``tokens`` tokens of width ``dim``."""
    linear = 2 * tokens * (3 * dim * dim + dim * dim + 2 * dim * mlp_dim)  # qkv, proj, mlp
    attention = 2 * 2 * tokens * tokens * dim  # q k^T and (weights) v
    return linear + attention


def mae_flops(config: MAEConfig, mask_ratio: float | None = None) -> dict[str, int]:
    """Forward FLOPs per image of the encoder, the decoder, and their sum; ``train_step`` is
    three times the sum."""
    c = config
    L = c.num_patches
    K = num_visible(L, c.mask_ratio if mask_ratio is None else mask_ratio)
    enc_tokens = 1 + (L if c.encoder_mask_tokens else K)
    encoder = 2 * L * c.patch_dim * c.encoder_dim  # the patch embedding sees every patch
    encoder += c.encoder_layers * block_flops(enc_tokens, c.encoder_dim, c.encoder_mlp_dim)
    decoder = 2 * enc_tokens * c.encoder_dim * c.decoder_dim  # projection
    decoder += c.decoder_layers * block_flops(1 + L, c.decoder_dim, c.decoder_mlp_dim)
    decoder += 2 * L * c.decoder_dim * c.patch_dim  # pixel head
    total = encoder + decoder
    return {"encoder": encoder, "decoder": decoder, "total": total, "train_step": 3 * total}
