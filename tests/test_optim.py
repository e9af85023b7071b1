"""Optimisation rules: the lr schedule, pre-training and fine-tuning parameter groups."""

import math

import pytest

import mae
from mae.evaluate import Classifier
from mae.optim import layer_decay_groups, layer_id, lr_at, param_groups

TINY = {"img_size": 16, "patch_size": 4, "encoder_dim": 32, "encoder_layers": 2,
        "encoder_heads": 2, "decoder_dim": 16, "decoder_layers": 1, "decoder_heads": 2}

# A block's parameters and whether weight decay applies to them.
BLOCK = [("norm1.weight", False), ("norm1.bias", False), ("attn.qkv.weight", True),
         ("attn.qkv.bias", False), ("attn.proj.weight", True), ("attn.proj.bias", False),
         ("norm2.weight", False), ("norm2.bias", False), ("mlp.fc1.weight", True),
         ("mlp.fc1.bias", False), ("mlp.fc2.weight", True), ("mlp.fc2.bias", False)]


def names_of(model, params):
    by_id = {id(p): n for n, p in model.named_parameters()}
    return sorted(by_id[id(p)] for p in params)


def test_lr_warms_up_linearly_then_follows_a_half_cosine():
    assert [lr_at(s, 20, 4, 1.0) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(4, 20, 4, 1.0) == 1.0  # the cosine starts at the peak
    assert lr_at(12, 20, 4, 1.0, 0.2) == pytest.approx(0.6)  # half way: the midpoint
    assert lr_at(20, 20, 4, 1.0, 0.2) == pytest.approx(0.2)
    assert lr_at(30, 20, 4, 1.0, 0.2) == pytest.approx(0.2)  # past the end it stays at final
    assert lr_at(5, 10, 0, 2.0) == pytest.approx(1 + math.cos(math.pi / 2))  # no warm-up


def block_names(prefix, depth, decayed):
    """The names of the block parameters with (or without) weight decay."""
    return [f"{prefix}.blocks.{i}.{s}" for i in range(depth) for s, d in BLOCK if d == decayed]


def test_pretraining_decays_every_matrix_but_no_bias_norm_or_token():
    model = mae.MAE(TINY)
    decay, no_decay = param_groups(model, 0.05)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.05, 0.0)
    # The tokens are exempt: a documented deviation from the reference (mae/optim.py).
    want_decay = ["encoder.patch_embed.proj.weight", "decoder.embed.weight", "decoder.pred.weight"]
    want_no_decay = ["encoder.cls_token", "decoder.mask_token", "encoder.patch_embed.proj.bias", "encoder.norm.weight", "encoder.norm.bias",
                     "decoder.embed.bias", "decoder.norm.weight", "decoder.norm.bias",
                     "decoder.pred.bias"]
    for decayed, want in ((True, want_decay), (False, want_no_decay)):
        want += block_names("encoder", 2, decayed) + block_names("decoder", 1, decayed)
    assert names_of(model, decay["params"]) == sorted(want_decay)
    assert names_of(model, no_decay["params"]) == sorted(want_no_decay)


def test_pretraining_exempts_the_encoder_mask_token_and_skips_frozen_parameters():
    model = mae.MAE({**TINY, "encoder_mask_tokens": True})
    model.decoder.pred.requires_grad_(False)
    decay, no_decay = param_groups(model, 0.05)
    assert "encoder.mask_token" in names_of(model, no_decay["params"])
    grouped = names_of(model, decay["params"] + no_decay["params"])
    assert not any(n.startswith("decoder.pred.") for n in grouped)


def test_finetuning_groups_follow_the_reference_table():
    model = Classifier(mae.MAEConfig.from_dict(TINY), 10)
    wd, decay = 0.05, 0.5
    # name: (weight decay, layer id, lr scale = decay ** (depth + 1 - layer)), depth 2.
    want = {
        "pos_embed": (0.0, 0, 0.125),
        "encoder.cls_token": (0.0, 0, 0.125),
        "encoder.patch_embed.proj.weight": (wd, 0, 0.125),
        "encoder.patch_embed.proj.bias": (0.0, 0, 0.125),
        "fc_norm.weight": (0.0, 3, 1.0),
        "fc_norm.bias": (0.0, 3, 1.0),
        "head.weight": (wd, 3, 1.0),
        "head.bias": (0.0, 3, 1.0),
    }
    for i, scale in ((0, 0.25), (1, 0.5)):
        for suffix, decayed in BLOCK:
            want[f"encoder.blocks.{i}.{suffix}"] = (wd if decayed else 0.0, i + 1, scale)
    got = {}
    for group in layer_decay_groups(model, wd, decay):
        for name in names_of(model, group["params"]):
            assert name not in got
            got[name] = (group["weight_decay"], group["layer_id"], group["lr_scale"])
    assert got == want
    # The encoder's final norm is unused in fine-tuning: frozen, so in no group.
    assert {n for n, _ in model.named_parameters()} - set(got) == {"encoder.norm.weight",
                                                                  "encoder.norm.bias"}


def test_layer_ids_of_the_embedding_blocks_and_the_rest():
    assert [layer_id(n, 12) for n in ("pos_embed", "encoder.cls_token", "encoder.mask_token",
                                      "encoder.patch_embed.proj.bias")] == [0, 0, 0, 0]
    assert layer_id("encoder.blocks.0.attn.qkv.weight", 12) == 1
    assert layer_id("encoder.blocks.11.mlp.fc2.bias", 12) == 12
    assert layer_id("head.weight", 12) == layer_id("encoder.norm.weight", 12) == 13
