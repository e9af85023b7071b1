"""mae.inside: the attention weights chapter 9 draws, the mean attention distance, PCA colours."""

import torch

from mae import MAE, MAEConfig
from mae.inside import (
    attention_weights, encoder_attention, mean_attention_distance, patch_distances, pca_colours,
)
from mae.layers import merge_heads, split_heads

SMALL = dict(img_size=16, patch_size=4, encoder_dim=32, encoder_layers=3, encoder_heads=2,
             decoder_dim=16, decoder_layers=1, decoder_heads=2)


def test_weights_reproduce_the_modules_output():
    torch.manual_seed(0)
    model = MAE(MAEConfig(**SMALL)).eval()
    x = torch.randn(2, 17, 32)
    attn = model.encoder.blocks[0].attn
    w = attention_weights(attn, x)
    v = split_heads(attn.qkv(x).chunk(3, dim=-1)[2], attn.heads)
    torch.testing.assert_close(attn.proj(merge_heads(w @ v)), attn(x), rtol=1e-5, atol=1e-5)


def test_encoder_attention_has_every_block_on_all_patches():
    torch.manual_seed(0)
    model = MAE(MAEConfig(**SMALL)).eval()
    weights = encoder_attention(model, torch.randn(3, 3, 16, 16))
    assert len(weights) == 3 and all(w.shape == (3, 2, 17, 17) for w in weights)
    for w in weights:
        torch.testing.assert_close(w.sum(-1), torch.ones(3, 2, 17))
    assert not any(b.attn._forward_hooks for b in model.encoder.blocks)  # hooks removed


def test_patch_distances_are_pixel_distances_between_centres():
    d = patch_distances(3, 4)
    assert d.shape == (9, 9) and torch.equal(d, d.T) and d.diag().abs().max() == 0
    assert d[0, 1] == 4 and d[0, 3] == 4 and torch.isclose(d[0, 8], torch.tensor(8 * 2**0.5))


def test_mean_attention_distance_of_known_patterns():
    grid, p, L = 4, 8, 16
    d = patch_distances(grid, p)
    self_only = torch.eye(L).expand(2, 3, L, L)
    assert torch.allclose(mean_attention_distance(self_only, grid, p), torch.zeros(3))
    uniform = torch.full((1, 2, L, L), 1 / L)
    assert torch.allclose(mean_attention_distance(uniform, grid, p), d.mean().expand(2))
    right = torch.zeros(1, 1, L, L)  # every patch looks at its right neighbour (last column: left)
    for i in range(L):
        right[0, 0, i, i + 1 if i % grid < grid - 1 else i - 1] = 1
    assert torch.allclose(mean_attention_distance(right, grid, p), torch.tensor([float(p)]))
    # a CLS token first: its row and column are left out, patches' rows renormalised
    with_cls = torch.zeros(1, 1, L + 1, L + 1)
    with_cls[0, 0, 1:, 0] = 0.5
    with_cls[0, 0, 1:, 1:] = right[0, 0] * 0.5
    with_cls[0, 0, 0, :] = 1 / (L + 1)
    assert torch.allclose(mean_attention_distance(with_cls, grid, p), torch.tensor([float(p)]))


def test_pca_colours_follow_the_main_direction_of_variation():
    g = torch.Generator().manual_seed(0)
    position = torch.linspace(-1, 1, 10)
    direction = torch.randn(16, generator=g)
    tokens = position[None, :, None] * direction * 10 + 0.01 * torch.randn(2, 10, 16, generator=g)
    colours = pca_colours(tokens)
    assert colours.shape == (2, 10, 3) and colours.min() >= 0 and colours.max() <= 1
    first = colours[0, :, 0]
    assert (first.diff() > 0).all() or (first.diff() < 0).all()  # monotone along the direction
    torch.testing.assert_close(pca_colours(tokens), colours)  # deterministic, sign included
