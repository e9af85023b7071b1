"""How parameters are optimised, in pre-training and in fine-tuning: the learning-rate schedule
and the parameter groups that set each parameter's weight decay and learning-rate scale.

The two recipes exempt different parameters from weight decay. Fine-tuning does as the reference
code: no decay on biases, 1-D parameters, the positional embedding and the CLS token, and each
layer's learning rate scaled down with its distance from the head (layer-wise decay, after BEiT).
Pre-training deviates from it on purpose: the reference decays the CLS and mask tokens (its
optimiser exempts only biases and 1-D parameters); here they are exempt too, as in fine-tuning.
Every cpu-tier run in results/ was trained with this rule, and changing it would make new runs
incomparable with them; its effect (two vectors of D numbers) has not been measured.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

# Fine-tuning: parameters exempt from weight decay besides the 1-D ones (the ViT's list).
FINETUNE_NO_DECAY = ("pos_embed", "cls_token")


def lr_at(step: int, total: int, warmup: int, peak: float, final: float = 0.0) -> float:
    """Linear warm-up for ``warmup`` steps, then half-cosine from ``peak`` to ``final``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return final + (peak - final) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _exempt(name: str, p: nn.Parameter) -> bool:
    """No weight decay on biases and 1-D parameters (norm weights): shifting or scaling a
    feature is not the complexity weight decay is meant to limit."""
    return p.ndim <= 1 or name.endswith(".bias")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Pre-training groups [decay, no decay]: every weight matrix is decayed; biases, norm
    weights and the CLS and mask tokens are not (the tokens: a deviation, see above). Frozen
    parameters are left out."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if _exempt(name, p) or name.endswith("_token") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def layer_id(name: str, depth: int) -> int:
    """A ViT parameter's layer for lr decay: 0 for the embedding (patch embedding, positional
    embedding, CLS and mask tokens), i + 1 for block i, depth + 1 for the rest (the final norms
    and the head). Names may carry the Classifier's ``encoder.`` prefix."""
    name = name.removeprefix("encoder.")
    if name in ("pos_embed", "cls_token", "mask_token") or name.startswith("patch_embed."):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def layer_decay_groups(
    model: nn.Module, weight_decay: float, layer_decay: float,
    no_decay: tuple[str, ...] = FINETUNE_NO_DECAY,
) -> list[dict[str, Any]]:
    """Fine-tuning groups, one per (layer, decayed or not): each with ``lr_scale`` =
    layer_decay ** (depth + 1 - layer) (the head trains at the full rate, the embedding at
    layer_decay ** (depth + 1)), ``layer_id`` and ``weight_decay``, which is 0 for biases, 1-D
    parameters and the names in ``no_decay``. depth is the number of ``blocks.<i>``; frozen
    parameters are left out. The training loop sets each group's lr to lr * lr_scale."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    blocks = {n.removeprefix("encoder.").split(".")[1] for n, _ in named
              if n.removeprefix("encoder.").startswith("blocks.")}
    depth = len(blocks)
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in named:
        exempt = _exempt(name, p) or name.removeprefix("encoder.") in no_decay
        layer = layer_id(name, depth)
        group = groups.setdefault((layer, exempt), {
            "params": [], "weight_decay": 0.0 if exempt else weight_decay,
            "lr_scale": layer_decay ** (depth + 1 - layer), "layer_id": layer})
        group["params"].append(p)
    return list(groups.values())
