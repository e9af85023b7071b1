"""The reconstruction loss (the paper, section 3, "Reconstruction target").

Mean squared error between predicted and target pixels, averaged over the *hidden* patches only.
With norm-pix loss the target is each patch normalised by its own mean and variance (Table 1d).
"""

from __future__ import annotations

import torch

from .masking import gather_tokens
from .patches import patchify

NORM_PIX_EPS = 1e-6


def norm_pix_target(patches: torch.Tensor, eps: float = NORM_PIX_EPS) -> torch.Tensor:
    """Normalise each patch by its own mean and unbiased variance. (B, L, P) -> (B, L, P).

    The epsilon keeps flat patches (variance 0, e.g. sky) finite; the unbiased variance matches
    the reference implementation.
    """
    centred = patches - patches.mean(dim=-1, keepdim=True)  # (B, L, P)
    # The unbiased variance written out: torch.var over a short last dimension is ~5x slower.
    var = centred.pow(2).sum(dim=-1, keepdim=True) / (patches.shape[-1] - 1)  # (B, L, 1)
    return centred / (var + eps).sqrt()  # (B, L, P)


def reconstruction_target(
    images: torch.Tensor, patch_size: int, norm_pix: bool, only: torch.Tensor | None = None,
) -> torch.Tensor:
    """The pixels the decoder must predict: (B, C, H, W) -> (B, L, P), float32; with a (B, M)
    index ``only``, just those patches: (B, M, P)."""
    target = patchify(images.float(), patch_size)  # (B, L, P)
    if only is not None:
        target = gather_tokens(target, only)  # (B, M, P)
    return norm_pix_target(target) if norm_pix else target


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-patch MSE averaged over hidden patches (mask == 1). Returns a scalar.

    Visible patches get zero weight, so their predictions receive no gradient. With no hidden
    patch (mask ratio 0) there is nothing to reconstruct and the loss is 0.
    """
    per_patch = (pred.float() - target).pow(2).mean(dim=-1)  # (B, L)
    return (per_patch * mask).sum() / mask.sum().clamp(min=1)
