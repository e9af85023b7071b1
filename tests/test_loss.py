import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mae import MAE, patchify
from mae.loss import masked_mse, norm_pix_target, reconstruction_target


@settings(max_examples=40, deadline=None)
@given(B=st.integers(1, 3), L=st.integers(1, 20), P=st.integers(2, 50), seed=st.integers(0, 999))
def test_norm_pix_target_zero_mean_unit_variance(B, L, P, seed):
    g = torch.Generator().manual_seed(seed)
    patches = torch.rand(B, L, P, generator=g, dtype=torch.float64) * 5 + 3
    t = norm_pix_target(patches, eps=0.0)
    torch.testing.assert_close(t.mean(-1), torch.zeros(B, L, dtype=torch.float64), atol=1e-9, rtol=0)
    # Unbiased variance (the reference's choice), so the unbiased variance of targets is 1.
    torch.testing.assert_close(t.var(-1, unbiased=True), torch.ones(B, L, dtype=torch.float64))


def test_norm_pix_flat_patch_stays_finite():
    flat = torch.full((1, 2, 12), 0.25)  # exactly representable: mean is exact
    assert torch.equal(norm_pix_target(flat), torch.zeros(1, 2, 12))


def test_masked_mse_only_counts_hidden_patches():
    pred, target = torch.randn(2, 6, 4), torch.randn(2, 6, 4)
    mask = torch.tensor([[1, 0, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]], dtype=torch.float32)
    per_patch = ((pred - target) ** 2).mean(-1)
    expected = per_patch[mask.bool()].mean()
    torch.testing.assert_close(masked_mse(pred, target, mask), expected)
    # Changing visible-patch predictions changes nothing.
    pred2 = pred.clone()
    pred2[~mask.bool()] += 100
    torch.testing.assert_close(masked_mse(pred2, target, mask), expected)


def test_no_hidden_patch_gives_zero_loss():
    assert masked_mse(torch.ones(1, 4, 3), torch.zeros(1, 4, 3), torch.zeros(1, 4)).item() == 0


def test_target_is_float32_patches():
    images = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    t = reconstruction_target(images, 4, norm_pix=False)
    assert t.dtype == torch.float32
    torch.testing.assert_close(t, patchify(images.float(), 4))


def test_visible_predictions_get_no_gradient(small_config):
    """End to end: the loss ignores the decoder's output on visible patches."""
    model = MAE(small_config.replace(norm_pix_loss=True))
    images = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, small_config.num_patches)
    latent, mask, ids_restore = model.encoder(images, 0.75, noise)
    pred = model.decoder(latent, ids_restore).detach().requires_grad_(True)
    loss = masked_mse(pred, reconstruction_target(images, 4, True), mask)
    loss.backward()
    assert pred.grad[mask == 0].abs().max() == 0
    assert pred.grad[mask == 1].abs().max() > 0
