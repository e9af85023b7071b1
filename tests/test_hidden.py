"""The training shortcut (mae.hidden): the same loss and gradients as MAE.forward."""

import pytest
import torch

from mae import MAE
from mae.config import ConfigError
from mae.hidden import (
    HiddenPatchLoss, block_at_queries, block_with_table_tail, decode_hidden, hidden_patch_loss,
)
from mae.layers import Block


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_block_with_queries_equals_the_full_block_at_those_tokens(qkv_bias):
    """Computing only some tokens (they still attend to all) gives exactly their rows of the
    full block's output."""
    torch.manual_seed(0)
    block = Block(32, 4, qkv_bias=qkv_bias).double()
    x = torch.randn(3, 11, 32, dtype=torch.float64)
    queries = torch.stack([torch.randperm(11)[:6] for _ in range(3)])  # (B, M)
    full = block(x)
    expected = full.gather(1, queries.unsqueeze(-1).expand(-1, -1, 32))
    torch.testing.assert_close(block_at_queries(block, x, queries), expected)


def test_block_with_an_int_query_start_equals_the_full_block_from_there():
    torch.manual_seed(0)
    block = Block(32, 4).double()
    x = torch.randn(3, 11, 32, dtype=torch.float64)
    torch.testing.assert_close(block_at_queries(block, x, 4), block(x)[:, 4:])


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_block_on_a_table_tail_equals_the_block_on_the_gathered_sequence(qkv_bias):
    """block_with_table_tail projects each table row once; values and gradients (of the block's
    weights, the head and the table) are those of the block on the concatenated sequence."""
    torch.manual_seed(0)
    block = Block(32, 4, qkv_bias=qkv_bias).double()
    head = torch.randn(3, 5, 32, dtype=torch.float64, requires_grad=True)
    table = torch.randn(9, 32, dtype=torch.float64, requires_grad=True)
    index = torch.stack([torch.randperm(9)[:6] for _ in range(3)])  # (B, M), rows may repeat
    index[0, 1] = index[0, 0]
    ours = block_with_table_tail(block, head, table, index)
    ref = block(torch.cat([head, table[index]], dim=1))
    torch.testing.assert_close(ours, ref)
    g = torch.randn_like(ref)
    inputs = (head, table, *block.parameters())
    for a, b in zip(torch.autograd.grad(ours, inputs, g), torch.autograd.grad(ref, inputs, g)):
        torch.testing.assert_close(a, b)



@pytest.mark.parametrize("variant", [
    {}, {"norm_pix_loss": True}, {"encoder_mask_tokens": True}, {"mask_sampling": "block"},
    {"decoder_layers": 2, "mask_ratio": 0.5}, {"mask_ratio": 0.9, "qkv_bias": False},
    {"decoder_layers": 3}, {"encoder_mask_tokens": True, "decoder_layers": 2},
    {"cls_token": False, "decoder_layers": 2}, {"cls_token": False, "encoder_mask_tokens": True},
])
def test_hidden_patch_loss_has_the_loss_and_gradients_of_the_full_forward(
        small_config, variant):
    """hidden_patch_loss (what training calls) computes the decoder's last block and pixel head
    on the hidden patches only: the same loss and the same gradient for every parameter."""
    torch.manual_seed(0)
    model = MAE(small_config.replace(**variant)).double()
    images = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    noise = torch.rand(3, 64)
    def gradients(loss):
        model.zero_grad()
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    full = model(images, noise=noise)
    assert full.pred.shape == (3, 64, 48)
    loss, mask = hidden_patch_loss(model, images, noise=noise)
    assert torch.equal(mask, full.mask)
    # The loss is reduced in float32 (as in training), in another order: float32 rounding.
    torch.testing.assert_close(loss, full.loss, rtol=1e-6, atol=0)
    grads = [gradients(full.loss), gradients(loss)]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-9,
                                   msg=f"gradient of {name}")


@pytest.mark.parametrize("variant", [
    {}, {"decoder_layers": 2}, {"decoder_layers": 3, "mask_ratio": 0.5},
    {"encoder_mask_tokens": True, "decoder_layers": 2}, {"cls_token": False},
    {"cls_token": False, "decoder_layers": 2}, {"cls_token": False, "encoder_mask_tokens": True},
])
def test_decoder_hidden_path_equals_the_full_decoder_at_the_hidden_patches(small_config, variant):
    """decode_hidden keeps masking order and shares the mask tokens' first projection, yet
    predicts exactly what the full decoder predicts at the hidden patches; ``hidden`` lists
    the hidden patches, in masking order."""
    torch.manual_seed(0)
    model = MAE(small_config.replace(**variant)).double()
    images = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    noise = torch.rand(3, 64)
    latent, mask, ids_restore = model.encoder(images, model.config.mask_ratio, noise)
    K = 64 - int(mask[0].sum())
    full = model.decoder(latent, ids_restore)  # (B, L, P)
    pred, hidden = decode_hidden(model.decoder, latent, ids_restore, K)
    assert torch.equal(hidden, noise.argsort(dim=1)[:, K:])
    assert bool((mask.gather(1, hidden) == 1).all())
    torch.testing.assert_close(pred, full.gather(1, hidden.unsqueeze(-1).expand(-1, -1, 48)))


def test_hidden_patch_loss_refuses_a_mask_that_hides_nothing(small_config):
    with pytest.raises(ConfigError, match="hides no patch"):
        hidden_patch_loss(MAE(small_config), torch.randn(2, 3, 32, 32), mask_ratio=0.0)


def test_the_training_module_wraps_the_same_loss(small_config):
    torch.manual_seed(0)
    model = MAE(small_config)
    images, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 64)
    torch.testing.assert_close(HiddenPatchLoss(model)(images, noise=noise)[0],
                               hidden_patch_loss(model, images, noise=noise)[0])
    assert list(HiddenPatchLoss(model).parameters()) == list(model.parameters())
