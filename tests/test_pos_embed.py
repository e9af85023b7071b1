import math

import numpy as np
import pytest
import torch

from mae import MAE, patchify, random_masking, sincos_2d, unpatchify
from mae.pos_embed import sincos_1d


def test_shape_and_cls_row():
    t = sincos_2d(64, 8, cls_token=True)
    assert t.shape == (65, 64) and t.dtype == torch.float32
    assert torch.equal(t[0], torch.zeros(64))
    assert sincos_2d(64, 8).shape == (64, 64)


def test_closed_form_values():
    dim, side = 16, 4
    t = sincos_2d(dim, side)
    q = dim // 4  # frequencies per (axis, sin/cos)
    for r in range(side):
        for c in range(side):
            row = t[r * side + c]
            for k in range(q):
                omega = 1 / 10000 ** (k / q)
                # first half: column; second half: row (the reference layout)
                assert row[k].item() == pytest.approx(math.sin(c * omega), abs=1e-6)
                assert row[q + k].item() == pytest.approx(math.cos(c * omega), abs=1e-6)
                assert row[2 * q + k].item() == pytest.approx(math.sin(r * omega), abs=1e-6)
                assert row[3 * q + k].item() == pytest.approx(math.cos(r * omega), abs=1e-6)


def official_table(dim: int, side: int, cls_token: bool) -> np.ndarray:
    """The reference's table, transcribed with NumPy (facebookresearch/mae, util/pos_embed.py:
    ``get_2d_sincos_pos_embed``): a meshgrid with the column index first, each half the 1-D
    encoding [sin | cos] at frequencies 1 / 10000^(k / (D/4)), computed in float64."""
    grid = np.stack(np.meshgrid(np.arange(side, dtype=np.float32),  # w first, as theirs
                                np.arange(side, dtype=np.float32)), axis=0).reshape(2, -1)

    def one_d(width, pos):
        omega = 1.0 / 10000 ** (np.arange(width // 2, dtype=np.float64) / (width / 2.0))
        out = np.einsum("m,d->md", pos, omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    table = np.concatenate([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], axis=1)
    return np.concatenate([np.zeros((1, dim)), table]) if cls_token else table


@pytest.mark.parametrize("dim, side", [(16, 4), (64, 8), (768, 14), (1280, 16)])
def test_the_table_is_the_reference_one(dim, side):
    expected = torch.from_numpy(official_table(dim, side, cls_token=True)).float()
    torch.testing.assert_close(sincos_2d(dim, side, cls_token=True), expected)


def test_transposing_the_grid_swaps_the_halves_and_similarity_depends_on_the_offset_only():
    """Two properties of the 2-D table that do not depend on how it is computed: the first half
    encodes the column and the second the row (so the transposed position swaps the halves);
    and the dot product of two positions, a sum of cos(omega * difference), depends only on
    their offset (relative position)."""
    dim, side = 32, 6
    t = sincos_2d(dim, side).double().reshape(side, side, dim)  # (row, col, D)
    torch.testing.assert_close(t.transpose(0, 1), torch.cat([t[..., dim // 2:],
                                                              t[..., :dim // 2]], dim=-1))
    for dr, dc in ((0, 1), (2, -1), (3, 3)):
        dots = [t[r, c] @ t[r + dr, c + dc] for r in range(side) for c in range(side)
                if 0 <= r + dr < side and 0 <= c + dc < side]
        torch.testing.assert_close(torch.stack(dots), dots[0].expand(len(dots)))
    assert t[0, 0] @ t[0, 1] > t[0, 0] @ t[0, 3]  # nearer positions are more alike


def test_positions_are_distinct():
    t = sincos_2d(32, 8)
    assert torch.cdist(t, t).add(torch.eye(64) * 10).min() > 0.1


def test_width_errors():
    with pytest.raises(ValueError, match="multiple of 4"):
        sincos_2d(30, 4)
    with pytest.raises(ValueError, match="even"):
        sincos_1d(7, torch.arange(3))


def test_the_encoder_adds_positions_as_the_reference_does(small_config):
    """PAPER.md pitfall: the encoder embeds only the kept patches and adds each its own position;
    the reference embeds every patch, adds the table, then keeps the K with the smallest noise
    and puts the CLS token (plus its zero position) first. Both give the same encoder output."""
    model = MAE(small_config)
    images = torch.randn(4, 3, 32, 32)
    noise = torch.rand(4, small_config.num_patches)
    enc = model.encoder
    with torch.no_grad():
        x = enc.patch_embed.proj(images).flatten(2).transpose(1, 2)  # the conv, (B, L, D)
        x = x + sincos_2d(small_config.encoder_dim, small_config.grid_size)
        keep = noise.argsort(dim=1)[:, :small_config.num_visible]  # (B, K)
        x = torch.stack([x[b, keep[b]] for b in range(4)])  # (B, K, D)
        cls = enc.cls_token.expand(4, -1, -1)  # its position is the table's zero row
        x = torch.cat([cls, x], dim=1)
        for block in enc.blocks:
            x = block(x)
        reference = enc.norm(x)
        torch.testing.assert_close(enc(images, 0.75, noise=noise).latent, reference)
    # And the pixels of hidden patches do not reach the encoder: changing them changes nothing.
    hidden = random_masking(patchify(images, 4), 0.75, noise=noise).mask.bool()
    patches = patchify(images, 4)
    patches[hidden] = torch.randn_like(patches[hidden])
    changed = unpatchify(patches, 4)
    with torch.no_grad():
        a = enc(images, 0.75, noise=noise).latent
        b = enc(changed, 0.75, noise=noise).latent
    torch.testing.assert_close(a, b)
