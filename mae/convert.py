"""Weight conversion between `mae` and the two naming schemes people publish MAE weights in.

- ``official``: facebookresearch/mae (``models_mae.py``): ``blocks.0.attn.qkv.weight``,
  ``decoder_blocks.0...``, ``decoder_pred``; checkpoints wrap the state dict in ``{"model": ...}``.
- ``transformers``: Hugging Face ``ViTMAEForPreTraining``, both the current naming
  (``vit.layers.0.attention.q_proj``) and the older one used by hub checkpoints
  (``vit.encoder.layer.0.attention.attention.query``); separate q / k / v projections, which
  `mae` fuses into one ``qkv`` matrix.

Positional embeddings are fixed sin-cos tables in every scheme; `mae` rebuilds them from the
config, so they are dropped on import (after a shape check) and regenerated on export.
Nothing here imports ``transformers``: configs are translated through plain attributes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from .config import MAEConfig, MAEError
from .model import MAE
from .pos_embed import sincos_2d

StateDict = dict[str, torch.Tensor]
FORMATS = ("mae", "official", "transformers")


class ConversionError(MAEError, ValueError):
    """A state dict does not fit the model; the message lists the keys and what to do."""


# (our prefix, their prefix). Block sub-keys are renamed separately (see BLOCK_PARTS).
OFFICIAL_NAMES = [
    ("encoder.patch_embed.proj", "patch_embed.proj"),
    ("encoder.cls_token", "cls_token"),
    ("encoder.blocks", "blocks"),
    ("encoder.norm", "norm"),
    ("decoder.embed", "decoder_embed"),
    ("decoder.mask_token", "mask_token"),
    ("decoder.blocks", "decoder_blocks"),
    ("decoder.norm", "decoder_norm"),
    ("decoder.pred", "decoder_pred"),
]
OFFICIAL_POS = {"pos_embed": "encoder", "decoder_pos_embed": "decoder"}

TRANSFORMERS_NAMES = [
    ("encoder.patch_embed.proj", "vit.embeddings.patch_embeddings.projection"),
    ("encoder.cls_token", "vit.embeddings.cls_token"),
    ("encoder.blocks", "vit.layers"),
    ("encoder.norm", "vit.layernorm"),
    ("decoder.embed", "decoder.decoder_embed"),
    ("decoder.mask_token", "decoder.mask_token"),
    ("decoder.blocks", "decoder.decoder_layers"),
    ("decoder.norm", "decoder.decoder_norm"),
    ("decoder.pred", "decoder.decoder_pred"),
]
TRANSFORMERS_POS = {"vit.embeddings.position_embeddings": "encoder",
                    "decoder.decoder_pos_embed": "decoder"}
# Inside one transformer block: our name -> transformers' name (q / k / v handled apart).
BLOCK_PARTS = {"norm1": "layernorm_before", "norm2": "layernorm_after",
               "attn.proj": "attention.o_proj", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
QKV = ("q_proj", "k_proj", "v_proj")
# Older transformers releases (and the hub checkpoints) -> current transformers naming.
LEGACY_TRANSFORMERS = [
    (r"^vit\.encoder\.layer\.", "vit.layers."),
    (r"\.attention\.attention\.query\.", ".attention.q_proj."),
    (r"\.attention\.attention\.key\.", ".attention.k_proj."),
    (r"\.attention\.attention\.value\.", ".attention.v_proj."),
    (r"\.attention\.output\.dense\.", ".attention.o_proj."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"\.output\.dense\.", ".mlp.fc2."),
]


def _rename(key: str, names: list[tuple[str, str]], reverse: bool = False) -> str | None:
    for ours, theirs in names:
        src, dst = (theirs, ours) if reverse else (ours, theirs)
        if key == src or key.startswith(src + "."):
            return dst + key[len(src):]
    return None


def unwrap(state_dict: Mapping[str, Any]) -> StateDict:
    """Accept a bare state dict or a training checkpoint that holds one under "model"."""
    if "model" in state_dict and isinstance(state_dict["model"], Mapping):
        state_dict = state_dict["model"]
    return dict(state_dict)


def _check_pos(key: str, value: torch.Tensor, config: MAEConfig, part: str) -> None:
    dim = config.encoder_dim if part == "encoder" else config.decoder_dim
    expected = (1, 1 + config.num_patches, dim)
    if tuple(value.shape) != expected:
        raise ConversionError(
            f"{key} has shape {tuple(value.shape)} but this config needs {expected}: the weights "
            f"were trained at another image size, patch size or width. Build the model with the "
            f"checkpoint's img_size / patch_size / {part}_dim."
        )
    table = sincos_2d(dim, config.grid_size, cls_token=True).unsqueeze(0)
    error = (value.detach().float().cpu() - table).abs().max().item()
    if error > 1e-4:
        zero = " (it is all zeros, as transformers >= 5 leaves a freshly built ViTMAE)" if not \
            value.any() else ""
        raise ConversionError(
            f"{key} is not the fixed 2-D sin-cos table that `mae` uses (appendix A.1): max "
            f"difference {error:.3g}{zero}. Converting would change what the model computes; "
            f"copy the sin-cos table into the source model first, or train with `mae` directly."
        )


def _require_cls_token(config: MAEConfig, fmt: str) -> None:
    if not config.cls_token:
        raise ConversionError(f"{fmt} MAE always has a CLS token, this model has none "
                              f"(cls_token=False): build it with cls_token=True to convert.")


# ----- import ---------------------------------------------------------------------------------
def from_official(state_dict: Mapping[str, Any], config: MAEConfig) -> StateDict:
    """Official facebookresearch/mae names -> `mae` names."""
    _require_cls_token(config, "the official")
    out, unexpected = {}, []
    for key, value in unwrap(state_dict).items():
        if key in OFFICIAL_POS:
            _check_pos(key, value, config, OFFICIAL_POS[key])
            continue
        ours = _rename(key, OFFICIAL_NAMES, reverse=True)
        if ours is None:
            unexpected.append(key)
        else:
            out[ours] = value
    _raise_unexpected(unexpected, "official")
    return out


def from_transformers(state_dict: Mapping[str, Any], config: MAEConfig) -> StateDict:
    """transformers ViTMAEForPreTraining names (current or legacy) -> `mae` names."""
    _require_cls_token(config, "transformers'")
    current = {}
    for key, value in unwrap(state_dict).items():
        for pattern, repl in LEGACY_TRANSFORMERS:
            key = re.sub(pattern, repl, key)
        current[key] = value
    out, unexpected, qkv = {}, [], {}
    for key, value in current.items():
        if key in TRANSFORMERS_POS:
            _check_pos(key, value, config, TRANSFORMERS_POS[key])
            continue
        m = re.match(r"^(.*)\.attention\.(q_proj|k_proj|v_proj)\.(weight|bias)$", key)
        if m:
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
            continue
        ours = _rename(key, TRANSFORMERS_NAMES, reverse=True)
        if ours is not None:
            for part, theirs in BLOCK_PARTS.items():
                ours = re.sub(rf"^(\w+\.blocks\.\d+)\.{re.escape(theirs)}\.", rf"\1.{part}.", ours)
        if ours is None or not _known_block_part(ours):
            unexpected.append(key)
        else:
            out[ours] = value
    for (prefix, kind), parts in qkv.items():
        ours = _rename(prefix, TRANSFORMERS_NAMES, reverse=True)
        if ours is None or len(parts) != 3:
            unexpected.extend(f"{prefix}.attention.{p}.{kind}" for p in parts)
            continue
        out[f"{ours}.attn.qkv.{kind}"] = torch.cat([parts[p] for p in QKV], dim=0)
    _raise_unexpected(unexpected, "transformers")
    return out


def _known_block_part(key: str) -> bool:
    m = re.match(r"^\w+\.blocks\.\d+\.(.*)\.(weight|bias)$", key)
    return m is None or m.group(1) in BLOCK_PARTS


def _raise_unexpected(keys: list[str], fmt: str) -> None:
    if keys:
        raise ConversionError(
            f"{len(keys)} key(s) have no counterpart in `mae` for the {fmt!r} format: "
            f"{', '.join(sorted(keys)[:10])}{' ...' if len(keys) > 10 else ''}. Is this a "
            f"state dict of the right model and format (one of {FORMATS})?"
        )


# ----- export ---------------------------------------------------------------------------------
def to_official(model: MAE) -> StateDict:
    """`mae` -> official facebookresearch/mae names, with the sin-cos tables it stores."""
    if model.config.encoder_mask_tokens:
        raise ConversionError("the official MAE has no mask tokens in the encoder: "
                              "this model (encoder_mask_tokens=True) cannot be exported to it.")
    _require_cls_token(model.config, "the official")
    out = {_rename(k, OFFICIAL_NAMES): v.detach().clone() for k, v in model.state_dict().items()}
    c = model.config
    out["pos_embed"] = sincos_2d(c.encoder_dim, c.grid_size, cls_token=True).unsqueeze(0)
    out["decoder_pos_embed"] = sincos_2d(c.decoder_dim, c.grid_size, cls_token=True).unsqueeze(0)
    return out


def to_transformers(model: MAE, legacy: bool = False) -> StateDict:
    """`mae` -> transformers ViTMAEForPreTraining names (``legacy=True``: hub-checkpoint names)."""
    if model.config.encoder_mask_tokens:
        raise ConversionError("transformers' ViTMAE has no mask tokens in the encoder: "
                              "this model (encoder_mask_tokens=True) cannot be exported to it.")
    _require_cls_token(model.config, "transformers'")
    out = {}
    for key, value in model.state_dict().items():
        value = value.detach().clone()
        m = re.match(r"^(\w+\.blocks\.\d+)\.(.*)\.(weight|bias)$", key)
        if m and m.group(2) == "attn.qkv":
            prefix = _rename(m.group(1), TRANSFORMERS_NAMES)
            for name, chunk in zip(QKV, value.chunk(3, dim=0)):
                out[f"{prefix}.attention.{name}.{m.group(3)}"] = chunk.clone()
        elif m:
            prefix = _rename(m.group(1), TRANSFORMERS_NAMES)
            out[f"{prefix}.{BLOCK_PARTS[m.group(2)]}.{m.group(3)}"] = value
        else:
            out[_rename(key, TRANSFORMERS_NAMES)] = value
    c = model.config
    out["vit.embeddings.position_embeddings"] = sincos_2d(
        c.encoder_dim, c.grid_size, cls_token=True).unsqueeze(0)
    out["decoder.decoder_pos_embed"] = sincos_2d(
        c.decoder_dim, c.grid_size, cls_token=True).unsqueeze(0)
    if legacy:
        reverse = [("vit.layers.", "vit.encoder.layer.")] + [
            (f".attention.{n}.", f".attention.attention.{q}.")
            for n, q in zip(QKV, ("query", "key", "value"))
        ] + [(".attention.o_proj.", ".attention.output.dense."),
             (".mlp.fc1.", ".intermediate.dense."), (".mlp.fc2.", ".output.dense.")]
        renamed = {}
        for key, value in out.items():
            for src, dst in reverse:
                key = key.replace(src, dst)
            renamed[key] = value
        out = renamed
    return out


# ----- loading --------------------------------------------------------------------------------
def load_weights(
    model: MAE, state_dict: Mapping[str, Any], format: str = "mae", strict: bool = True,
) -> tuple[list[str], list[str]]:
    """Load a state dict in any of `FORMATS` into ``model``.

    With ``strict`` (the default) a missing or unexpected key, or a shape mismatch, raises a
    `ConversionError` that lists them. With ``strict=False`` (e.g. official encoder-only
    checkpoints, which carry no decoder) returns ``(missing, unexpected)`` like torch does.
    """
    if format == "official":
        converted = from_official(state_dict, model.config)
    elif format == "transformers":
        converted = from_transformers(state_dict, model.config)
    elif format == "mae":
        converted = unwrap(state_dict)
    else:
        raise ConversionError(f"unknown weight format {format!r}: use one of {FORMATS}.")
    from .checkpoint import CheckpointError, check_finite

    try:
        check_finite(converted, "weights")
    except CheckpointError as e:
        raise ConversionError(str(e)) from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    wrong = sorted(f"{k}: {tuple(converted[k].shape)} vs model {tuple(expected[k].shape)}"
                   for k in set(expected) & set(converted)
                   if converted[k].shape != expected[k].shape)
    if wrong:
        raise ConversionError(
            f"shape mismatch for {len(wrong)} key(s): {'; '.join(wrong[:5])}. The weights come "
            f"from a model of another size: build MAE with the checkpoint's config."
        )
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {', '.join(missing[:8])}"
                         f"{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s): {', '.join(unexpected[:8])}"
                         f"{' ...' if len(unexpected) > 8 else ''}")
        raise ConversionError(
            f"state dict does not match the model ({'; '.join(parts)}). Check the format "
            f"(given {format!r}) and the config (depths, mask tokens); pass strict=False to load "
            f"an encoder-only checkpoint."
        )
    model.load_state_dict(converted, strict=False)
    return missing, unexpected


# ----- configs --------------------------------------------------------------------------------
def config_from_transformers(hf_config: Any, **overrides: Any) -> MAEConfig:
    """An `MAEConfig` from a transformers ``ViTMAEConfig`` (read through its attributes)."""
    if hf_config.hidden_act != "gelu":
        raise ConversionError(f"only GELU MLPs are supported, the config uses {hf_config.hidden_act!r}.")
    if hf_config.intermediate_size * hf_config.decoder_hidden_size != (
            hf_config.decoder_intermediate_size * hf_config.hidden_size):
        raise ConversionError("encoder and decoder must share one mlp_ratio in `mae`.")
    return MAEConfig.from_dict(dict(
        img_size=hf_config.image_size, patch_size=hf_config.patch_size,
        in_chans=hf_config.num_channels, encoder_dim=hf_config.hidden_size,
        encoder_layers=hf_config.num_hidden_layers, encoder_heads=hf_config.num_attention_heads,
        decoder_dim=hf_config.decoder_hidden_size,
        decoder_layers=hf_config.decoder_num_hidden_layers,
        decoder_heads=hf_config.decoder_num_attention_heads,
        mlp_ratio=hf_config.intermediate_size / hf_config.hidden_size,
        qkv_bias=hf_config.qkv_bias, layer_norm_eps=hf_config.layer_norm_eps,
        mask_ratio=hf_config.mask_ratio, norm_pix_loss=hf_config.norm_pix_loss,
        **overrides,
    ))


def transformers_config_kwargs(config: MAEConfig) -> dict[str, Any]:
    """Keyword arguments for ``transformers.ViTMAEConfig`` describing the same model."""
    _require_cls_token(config, "transformers'")
    return dict(
        image_size=config.img_size, patch_size=config.patch_size, num_channels=config.in_chans,
        hidden_size=config.encoder_dim, num_hidden_layers=config.encoder_layers,
        num_attention_heads=config.encoder_heads, intermediate_size=config.encoder_mlp_dim,
        decoder_hidden_size=config.decoder_dim, decoder_num_hidden_layers=config.decoder_layers,
        decoder_num_attention_heads=config.decoder_heads,
        decoder_intermediate_size=config.decoder_mlp_dim, qkv_bias=config.qkv_bias,
        layer_norm_eps=config.layer_norm_eps, mask_ratio=config.mask_ratio,
        norm_pix_loss=config.norm_pix_loss, hidden_act="gelu", hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
