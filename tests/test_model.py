import contextlib
import io

import pytest
import torch
import torch.nn.functional as F

from mae import MAE, MAEConfig, MAEOutput


def test_seed_api_verbatim():
    """The example from the project's seed works exactly as written."""
    torch.manual_seed(0)
    images = torch.randn(2, 3, 224, 224)
    from mae import MAE
    config = {"img_size": 224, "patch_size": 16, "encoder_dim": 768, "decoder_dim": 512,
              "encoder_layers": 12, "decoder_layers": 8, "mask_ratio": 0.75, "norm_pix_loss": True}
    model = MAE(config)
    loss, reconstructed, mask = model(images)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert reconstructed.shape == (2, 196, 16 * 16 * 3)
    assert mask.shape == (2, 196) and mask.sum(1).tolist() == [147, 147]


def test_output_has_named_fields(small_config):
    out = MAE(small_config)(torch.randn(2, 3, 32, 32))
    assert isinstance(out, MAEOutput)
    assert out.pred.shape == (2, 64, 48) and out.mask.shape == (2, 64)
    loss, pred, mask = out
    assert loss is out.loss


def test_accepts_config_object_and_dict_alike(small_config):
    torch.manual_seed(1)
    a = MAE(small_config)
    torch.manual_seed(1)
    b = MAE(small_config.to_dict())
    assert a.config == b.config
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(x, y)


def test_construction_and_forward_print_nothing(small_config):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        MAE(small_config)(torch.randn(1, 3, 32, 32))
    assert buf.getvalue() == ""


@pytest.mark.parametrize("variant", [{}, {"encoder_mask_tokens": True}, {"norm_pix_loss": True},
                                     {"mask_sampling": "block"}, {"mask_sampling": "grid"},
                                     {"cls_token": False}])
def test_gradients_reach_every_parameter(small_config, variant):
    model = MAE(small_config.replace(**variant))
    model(torch.randn(4, 3, 32, 32)).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_initialisation_follows_the_paper(small_config):
    torch.manual_seed(0)
    model = MAE(small_config.replace(encoder_dim=256, encoder_heads=4))
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            bound = (6 / (module.in_features + module.out_features)) ** 0.5  # xavier-uniform
            assert module.weight.abs().max() <= bound, name
            assert module.weight.abs().max() > 0.9 * bound, name
            assert torch.equal(module.bias, torch.zeros_like(module.bias)), name
    w = model.encoder.patch_embed.proj.weight  # like a linear map of 48 inputs
    bound = (6 / (w.shape[0] + w[0].numel())) ** 0.5
    assert bound * 0.9 < w.abs().max() <= bound
    for token in (model.encoder.cls_token, model.decoder.mask_token):
        assert 0.015 < token.std().item() < 0.025  # normal(0, 0.02)


def test_overfits_a_fixed_batch(small_config):
    """50 AdamW steps on one batch with a fixed mask at least halve the loss."""
    torch.manual_seed(0)
    model = MAE(small_config)
    # Smooth images (like photographs, unlike white noise) so hidden patches are predictable.
    images = F.interpolate(torch.randn(8, 3, 4, 4), size=32, mode="bicubic", align_corners=False)
    noise = torch.rand(8, small_config.num_patches)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.95))
    losses = []
    for _ in range(50):
        loss = model(images, noise=noise).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])


def test_mask_ratio_override_and_generator(small_config):
    model = MAE(small_config)
    images = torch.randn(2, 3, 32, 32)
    assert model(images, mask_ratio=0.5).mask.sum(1).tolist() == [32, 32]
    a = model(images, generator=torch.Generator().manual_seed(0))
    b = model(images, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.mask, b.mask) and torch.equal(a.loss, b.loss)
    with pytest.raises(ValueError, match=r"mask_ratio must be in \[0, 1\)"):
        model(images, mask_ratio=1.0)


def test_features_see_every_patch_in_order(small_config):
    model = MAE(small_config).eval()
    images = torch.randn(2, 3, 32, 32)
    feats = model.features(images)
    assert feats.shape == (2, 65, 64)
    # Deterministic (no random shuffle) and equal to the blocks applied to all patches in order.
    assert torch.equal(feats, model.features(images))
    enc = model.encoder
    x = enc.patch_embed(images) + enc.pos_embed[:, 1:]
    x = torch.cat([(enc.cls_token + enc.pos_embed[:, :1]).expand(2, -1, -1), x], 1)
    for block in enc.blocks:
        x = block(x)
    torch.testing.assert_close(feats, enc.norm(x))


def test_without_cls_token_every_sequence_is_patch_tokens_only(small_config):
    """cls_token=False (vit-pytorch's MAE): no CLS parameter, features are the L patch tokens,
    and each block sees exactly the tokens the CLS model sees minus its CLS token."""
    model = MAE(small_config.replace(cls_token=False)).eval()
    assert model.encoder.cls_token is None and "encoder.cls_token" not in model.state_dict()
    images = torch.randn(2, 3, 32, 32)
    enc = model.encoder
    x = enc.patch_embed(images) + enc.pos_embed[:, 1:]
    for block in enc.blocks:
        x = block(x)
    torch.testing.assert_close(model.features(images), enc.norm(x))  # (B, L, D): no CLS row
    noise = torch.rand(2, 64)
    latent, mask, ids_restore = enc(images, 0.75, noise)
    assert latent.shape == (2, 16, 64)
    dec = model.decoder
    tokens = torch.cat([dec.embed(latent), dec.mask_token.expand(2, 48, -1)], dim=1)
    x = tokens.gather(1, ids_restore.unsqueeze(-1).expand(-1, -1, 32)) + dec.pos_embed[:, 1:]
    for block in dec.blocks:
        x = block(x)
    torch.testing.assert_close(dec(latent, ids_restore), dec.pred(dec.norm(x)))


def test_mask_token_encoder_sees_all_tokens_but_no_hidden_pixels(small_config):
    model = MAE(small_config.replace(encoder_mask_tokens=True))
    images = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, 64)
    out = model.encoder(images, 0.75, noise)
    assert out.latent.shape == (2, 65, 64)
    changed = images.clone()
    hidden = out.mask[0].view(8, 8).bool().repeat_interleave(4, 0).repeat_interleave(4, 1)
    changed[0, :, hidden] = 5.0
    torch.testing.assert_close(model.encoder(changed, 0.75, noise).latent, out.latent)
    assert model(images).pred.shape == (2, 64, 48)


def test_bf16_autocast_runs_on_cpu(small_config):
    model = MAE(small_config)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 3, 32, 32))
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)


@pytest.mark.parametrize("images,match", [
    (torch.zeros(3, 32, 32), r"images must have shape \(B, 3, 32, 32\), got \(3, 32, 32\).*unsqueeze"),
    (torch.zeros(2, 1, 32, 32), r"1 channels but the model expects in_chans=3"),
    (torch.zeros(2, 32, 32, 3), r"channels-last\? use images.permute\(0, 3, 1, 2\)"),
    (torch.zeros(2, 3, 64, 64), r"images are 64x64 but the model expects img_size=32"),
    (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), r"floating-point.*images.float\(\) / 255"),
    (torch.zeros(0, 3, 32, 32), r"images is an empty batch \(0, 3, 32, 32\): pass at least one"),
])
def test_bad_input_errors(small_config, images, match):
    """One clear error, the same for every entry point that takes images: the model, its
    features and the fine-tuning classifier."""
    from mae.finetune import Classifier

    model = MAE(small_config)
    for entry in (model, model.features, Classifier(small_config, 10)):
        with pytest.raises(ValueError, match=match):
            entry(images)


def test_non_tensor_input(small_config):
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        MAE(small_config)([[1.0]])


def test_default_config_is_vit_b():
    with torch.device("meta"):
        model = MAE()
    assert model.config == MAEConfig()


def test_patch_embedding_is_the_strided_convolution_applied_to_patches(small_config):
    """The encoder embeds patchified pixels with the convolution's weights (so only the kept
    patches need embedding): the same values as the convolution itself."""
    torch.manual_seed(0)
    embed = MAE(small_config).encoder.patch_embed
    images = torch.randn(2, 3, 32, 32)
    conv = embed.proj(images).flatten(2).transpose(1, 2)  # (B, L, D)
    torch.testing.assert_close(embed(images), conv, rtol=1e-5, atol=1e-5)
