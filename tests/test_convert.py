"""Equivalence with an independent implementation (transformers' ViTMAE) and the official names."""

import pytest
import torch

from mae import MAE, MAEConfig, sincos_2d
from mae.convert import (
    ConversionError, config_from_transformers, load_weights, to_official, to_transformers,
    transformers_config_kwargs,
)

transformers = pytest.importorskip("transformers")
from transformers import ViTMAEConfig, ViTMAEForPreTraining  # noqa: E402

# transformers 5 renamed ViTMAE's modules (vit.layers.0.attention.q_proj); 4.x, the last line
# that runs on the oldest torch mae supports (the floor test), keeps the older names.
LEGACY = int(transformers.__version__.split(".")[0]) < 5

CONFIGS = {
    "img32-p4": dict(img_size=32, patch_size=4, encoder_dim=64, encoder_layers=2, encoder_heads=4,
                     decoder_dim=32, decoder_layers=2, decoder_heads=4),
    "img224-p16-shallow": dict(img_size=224, patch_size=16, encoder_dim=192, encoder_layers=2,
                               encoder_heads=3, decoder_dim=128, decoder_layers=1, decoder_heads=4),
    "img64-p8-noqkvbias": dict(img_size=64, patch_size=8, in_chans=1, encoder_dim=96,
                               encoder_layers=3, encoder_heads=6, decoder_dim=64, decoder_layers=2,
                               decoder_heads=2, qkv_bias=False, mask_ratio=0.6, mlp_ratio=2.0),
}


def hf_model(config: MAEConfig, seed: int = 0) -> ViTMAEForPreTraining:
    """A randomly initialised transformers ViTMAE whose tables are the fixed sin-cos ones, as in
    every published checkpoint (transformers >= 5 leaves them at zero in a fresh model)."""
    torch.manual_seed(seed)
    model = ViTMAEForPreTraining(ViTMAEConfig(**transformers_config_kwargs(config))).eval()
    with torch.no_grad():
        model.vit.embeddings.position_embeddings.copy_(
            sincos_2d(config.encoder_dim, config.grid_size, cls_token=True)[None])
        model.decoder.decoder_pos_embed.copy_(
            sincos_2d(config.decoder_dim, config.grid_size, cls_token=True)[None])
        # Non-trivial norms and tokens, so that every converted tensor matters.
        for name, p in model.named_parameters():
            if "layernorm" in name or "norm" in name or "token" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("norm_pix", [False, True])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_transformers_vitmae(name, norm_pix):
    config = MAEConfig.from_dict({**CONFIGS[name], "norm_pix_loss": norm_pix})
    reference = hf_model(config)
    ours = MAE(config).eval()
    load_weights(ours, reference.state_dict(), "transformers")
    torch.manual_seed(1)
    images = torch.randn(3, config.in_chans, config.img_size, config.img_size)
    noise = torch.rand(3, config.num_patches)
    with torch.no_grad():
        expected = reference(pixel_values=images, noise=noise)
        loss, pred, mask = ours(images, noise=noise)
    torch.testing.assert_close(mask, expected.mask.float(), rtol=0, atol=0)
    torch.testing.assert_close(pred, expected.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(loss, expected.loss, rtol=0, atol=1e-5)


def test_gradients_match_transformers():
    config = MAEConfig.from_dict({**CONFIGS["img32-p4"], "norm_pix_loss": True})
    reference = hf_model(config)
    ours = MAE(config)
    load_weights(ours, reference.state_dict(), "transformers")
    images, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 64)
    reference(pixel_values=images, noise=noise).loss.backward()
    ours(images, noise=noise).loss.backward()
    torch.testing.assert_close(ours.encoder.patch_embed.proj.weight.grad,
                               reference.vit.embeddings.patch_embeddings.projection.weight.grad,
                               rtol=1e-4, atol=1e-6)
    q_proj = (reference.vit.encoder.layer[0].attention.attention.query if LEGACY
              else reference.vit.layers[0].attention.q_proj)
    q_grad = q_proj.weight.grad
    torch.testing.assert_close(ours.encoder.blocks[0].attn.qkv.weight.grad[:64], q_grad,
                               rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(LEGACY, reason="transformers 4.x has no build_2d_sinusoidal_position_embedding")
def test_sincos_table_matches_transformers_builder():
    from transformers.models.vit_mae.modeling_vit_mae import build_2d_sinusoidal_position_embedding
    table = build_2d_sinusoidal_position_embedding(height=14, width=14, embed_dim=128,
                                                   cls_token=True)
    # transformers builds [row | column] and swaps the halves into the reference layout.
    table = torch.cat([table[..., 64:], table[..., :64]], dim=-1)
    torch.testing.assert_close(sincos_2d(128, 14, cls_token=True), table.float(), rtol=0, atol=1e-6)


def test_config_round_trip_through_transformers():
    config = MAEConfig.from_dict(CONFIGS["img64-p8-noqkvbias"])
    hf_config = ViTMAEConfig(**transformers_config_kwargs(config))
    assert config_from_transformers(hf_config) == config


def test_export_loads_strictly_into_transformers():
    config = MAEConfig.from_dict(CONFIGS["img32-p4"])
    ours = MAE(config).eval()
    reference = ViTMAEForPreTraining(ViTMAEConfig(**transformers_config_kwargs(config))).eval()
    reference.load_state_dict(to_transformers(ours, legacy=LEGACY), strict=True)
    images, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(images, noise=noise).pred,
                                   reference(pixel_values=images, noise=noise).logits,
                                   rtol=0, atol=1e-5)


@pytest.mark.parametrize("fmt,export", [
    ("transformers", to_transformers),
    ("transformers", lambda m: to_transformers(m, legacy=True)),
    ("official", to_official),
])
def test_round_trips_are_exact(fmt, export):
    config = MAEConfig.from_dict(CONFIGS["img32-p4"])
    source, target = MAE(config), MAE(config)
    load_weights(target, export(source), fmt)
    for (k, a), b in zip(source.state_dict().items(), target.state_dict().values()):
        assert torch.equal(a, b), k


def test_legacy_transformers_names():
    sd = to_transformers(MAE(MAEConfig.from_dict(CONFIGS["img32-p4"])), legacy=True)
    assert "vit.encoder.layer.1.attention.attention.query.weight" in sd
    assert "vit.encoder.layer.0.attention.output.dense.bias" in sd
    assert "decoder.decoder_layers.0.intermediate.dense.weight" in sd
    assert "decoder.decoder_layers.0.output.dense.weight" in sd


def test_official_names():
    """The key set of facebookresearch/mae's MaskedAutoencoderViT with one block each side."""
    config = MAEConfig.from_dict({**CONFIGS["img32-p4"], "encoder_layers": 1, "decoder_layers": 1})
    block = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
             "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
             "mlp.fc2.weight", "mlp.fc2.bias"]
    expected = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
                "norm.weight", "norm.bias", "mask_token", "decoder_pos_embed",
                "decoder_embed.weight", "decoder_embed.bias", "decoder_norm.weight",
                "decoder_norm.bias", "decoder_pred.weight", "decoder_pred.bias"}
    expected |= {f"blocks.0.{k}" for k in block} | {f"decoder_blocks.0.{k}" for k in block}
    sd = to_official(MAE(config))
    assert set(sd) == expected
    assert sd["pos_embed"].shape == (1, 65, 64) and sd["decoder_pos_embed"].shape == (1, 65, 32)


def test_checkpoint_wrapper_and_encoder_only():
    config = MAEConfig.from_dict(CONFIGS["img32-p4"])
    full = to_official(MAE(config))
    encoder_only = {k: v for k, v in full.items() if not k.startswith("decoder") and k != "mask_token"}
    model = MAE(config)
    with pytest.raises(ConversionError, match=r"missing \d+ key\(s\): decoder\..*strict=False"):
        load_weights(model, {"model": encoder_only}, "official")
    missing, unexpected = load_weights(model, {"model": encoder_only}, "official", strict=False)
    assert missing and all(k.startswith("decoder.") for k in missing) and not unexpected
    assert torch.equal(model.encoder.cls_token, full["cls_token"])


def test_unexpected_and_missing_keys_are_named():
    config = MAEConfig.from_dict(CONFIGS["img32-p4"])
    sd = to_official(MAE(config))
    sd["head.weight"] = torch.zeros(10, 64)
    with pytest.raises(ConversionError, match=r"1 key\(s\) have no counterpart.*head.weight"):
        load_weights(MAE(config), sd, "official")
    sd = MAE(config).state_dict()
    del sd["encoder.norm.bias"]
    sd["encoder.extra"] = torch.zeros(1)
    with pytest.raises(ConversionError,
                       match=r"missing 1 key\(s\): encoder.norm.bias; unexpected 1 key\(s\): encoder.extra"):
        load_weights(MAE(config), sd, "mae")


def test_shape_mismatch_and_wrong_positions():
    small = MAEConfig.from_dict(CONFIGS["img32-p4"])
    wider = small.replace(encoder_dim=128)
    with pytest.raises(ConversionError, match="pos_embed has shape"):
        load_weights(MAE(small), to_official(MAE(wider)), "official")
    sd = to_official(MAE(wider))
    sd.pop("pos_embed")
    with pytest.raises(ConversionError, match=r"shape mismatch.*build MAE with the checkpoint"):
        load_weights(MAE(small), sd, "official")
    sd = to_official(MAE(small))
    sd["pos_embed"] = torch.zeros_like(sd["pos_embed"])
    with pytest.raises(ConversionError, match="not the fixed 2-D sin-cos table.*all zeros"):
        load_weights(MAE(small), sd, "official")


def test_bad_format_and_unexportable_models():
    config = MAEConfig.from_dict(CONFIGS["img32-p4"])
    with pytest.raises(ConversionError, match="unknown weight format 'timm'"):
        load_weights(MAE(config), {}, "timm")
    tokens = MAE(config.replace(encoder_mask_tokens=True))
    for export in (to_official, to_transformers):
        with pytest.raises(ConversionError, match="encoder_mask_tokens=True"):
            export(tokens)
    no_cls = MAE(config.replace(cls_token=False))
    for export in (to_official, to_transformers):
        with pytest.raises(ConversionError, match="cls_token=False"):
            export(no_cls)
    for fmt, export in (("official", to_official), ("transformers", to_transformers)):
        with pytest.raises(ConversionError, match="build it with cls_token=True"):
            load_weights(no_cls, export(MAE(config)), fmt)
