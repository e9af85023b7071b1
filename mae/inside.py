"""Looking inside a trained encoder (chapter 9): every block's attention weights, how far each head
looks (the ViT paper's mean attention distance, Dosovitskiy et al. 2021, Fig. 7), and the patch
tokens' first principal components as colours."""

from __future__ import annotations

import torch

from .layers import Attention, attention_probs, split_heads
from .model import MAE


def attention_weights(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) of an `Attention` module on its input x (B, N, D): (B, h, N, N)."""
    q, k, _ = (split_heads(t, attn.heads) for t in attn.qkv(x).chunk(3, dim=-1))
    return attention_probs(q, k)


@torch.no_grad()
def encoder_attention(model: MAE, images: torch.Tensor) -> list[torch.Tensor]:
    """Each encoder block's attention weights, (B, h, N, N) per block, first block first, while the
    encoder sees all patches (no masking; ``images`` normalised as for training). N = 1 + L with
    the CLS token at index 0 (L without it)."""
    inputs: list[torch.Tensor] = []
    hooks = [block.attn.register_forward_hook(lambda m, args, out: inputs.append(args[0]))
             for block in model.encoder.blocks]
    try:
        model.features(images)
    finally:
        for hook in hooks:
            hook.remove()
    return [attention_weights(block.attn, x) for block, x in zip(model.encoder.blocks, inputs,
                                                                  strict=True)]


def patch_distances(grid: int, patch_size: int) -> torch.Tensor:
    """(L, L) distances in pixels between the centres of the patches of a grid x grid image,
    patches numbered row by row."""
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    centres = torch.stack([rows.flatten(), cols.flatten()], dim=1).float() * patch_size
    return torch.cdist(centres, centres)


def mean_attention_distance(weights: torch.Tensor, grid: int, patch_size: int) -> torch.Tensor:
    """Per head, how far in pixels a patch looks: the distance to each other patch weighted by the
    attention it pays to it, averaged over the query patches and the images. ``weights``
    (B, h, N, N) with N = L or 1 + L (a CLS token, first, is left out: it has no place, and each
    patch's weights on the other patches are renormalised to sum to 1). Returns (h,)."""
    L = grid * grid
    w = weights[..., -L:, -L:]  # patches to patches
    w = w / w.sum(dim=-1, keepdim=True)
    return (w * patch_distances(grid, patch_size).to(w)).sum(-1).mean(dim=(0, 2))


def pca_colours(tokens: torch.Tensor) -> torch.Tensor:
    """The first three principal components of patch tokens (B, L, D), fitted over all B x L
    tokens, each scaled to [0, 1] over them: (B, L, 3), one colour per patch."""
    flat = tokens.reshape(-1, tokens.shape[-1]).double()
    flat = flat - flat.mean(dim=0)
    _, _, v = torch.linalg.svd(flat, full_matrices=False)
    comps = flat @ v[:3].T  # (B * L, 3)
    # the sign of a component is arbitrary: fix it so that its largest loading is positive
    comps = comps * torch.sign(v[:3].gather(1, v[:3].abs().argmax(1, keepdim=True))).T
    lo, hi = comps.amin(0), comps.amax(0)
    return ((comps - lo) / (hi - lo).clamp_min(1e-12)).float().reshape(*tokens.shape[:2], 3)
