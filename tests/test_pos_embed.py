import math

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


def test_positions_are_distinct():
    t = sincos_2d(32, 8)
    assert torch.cdist(t, t).add(torch.eye(64) * 10).min() > 0.1


def test_width_errors():
    with pytest.raises(ValueError, match="multiple of 4"):
        sincos_2d(30, 4)
    with pytest.raises(ValueError, match="even"):
        sincos_1d(7, torch.arange(3))


def test_adding_positions_before_or_after_masking_is_the_same(small_config):
    """PAPER.md pitfall: positions added before dropping tokens, or after to the kept ones only,
    give the same encoder input -- each kept token carries its own position either way."""
    model = MAE(small_config)
    images = torch.randn(4, 3, 32, 32)
    noise = torch.rand(4, small_config.num_patches)
    enc = model.encoder
    tokens = enc.patch_embed(images)  # (B, L, D)
    pos = enc.pos_embed[:, 1:]  # (1, L, D)
    before = random_masking(tokens + pos, 0.75, noise=noise).visible  # the library's order
    kept = random_masking(tokens, 0.75, noise=noise)
    pos_kept = torch.gather(pos.expand(4, -1, -1), 1,
                            kept.ids_keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
    after = kept.visible + pos_kept
    torch.testing.assert_close(before, after, rtol=0, atol=0)
    # And the pixels of hidden patches do not reach the encoder: changing them changes nothing.
    hidden = kept.mask.bool()
    patches = patchify(images, 4)
    patches[hidden] = torch.randn_like(patches[hidden])
    changed = unpatchify(patches, 4)
    with torch.no_grad():
        a = enc(images, 0.75, noise=noise).latent
        b = enc(changed, 0.75, noise=noise).latent
    torch.testing.assert_close(a, b)
