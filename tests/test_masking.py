import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mae import ConfigError, random_masking, sample_noise
from mae.masking import block_noise, grid_noise


@settings(max_examples=80, deadline=None)
@given(B=st.integers(1, 4), L=st.integers(1, 80), D=st.integers(1, 5),
       ratio=st.floats(0.0, 0.99), seed=st.integers(0, 2**31))
def test_random_masking_properties(B, L, D, ratio, seed):
    K = int(L * (1 - ratio))
    if K < 1:
        with pytest.raises(ConfigError, match="leaves no visible patch"):
            random_masking(torch.zeros(B, L, D), ratio)
        return
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, L, D)
    visible, mask, ids_restore, ids_keep = random_masking(x, ratio, generator=g)
    assert visible.shape == (B, K, D) and ids_keep.shape == (B, K)
    # Binary, exactly L - K hidden per sample; hidden = 1.
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert mask.sum(1).tolist() == [L - K] * B
    # The visible tokens are exactly the unmasked positions, and ids_keep points at them.
    for b in range(B):
        assert torch.equal(torch.sort(ids_keep[b]).values, torch.nonzero(mask[b] == 0).flatten())
        assert torch.equal(visible[b], x[b, ids_keep[b]])
    # ids_restore inverts the shuffle: the shuffled mask put back in order is the mask.
    shuffled = torch.cat([torch.zeros(B, K), torch.ones(B, L - K)], dim=1)
    assert torch.equal(torch.gather(shuffled, 1, ids_restore), mask)
    # And it is a permutation whose inverse applied to it gives the identity.
    ids_shuffle = torch.argsort(ids_restore, dim=1)
    assert torch.equal(torch.gather(ids_shuffle, 1, ids_restore),
                       torch.arange(L).expand(B, L))


def test_samples_get_different_masks():
    _, mask, _, _ = random_masking(torch.zeros(8, 64, 1), 0.75, generator=torch.Generator().manual_seed(0))
    assert len({tuple(m.tolist()) for m in mask}) == 8


def test_noise_reproduces_mask_and_smallest_noise_is_kept():
    x = torch.randn(2, 16, 3)
    noise = torch.rand(2, 16)
    a = random_masking(x, 0.5, noise=noise)
    b = random_masking(x, 0.5, noise=noise.clone())
    assert torch.equal(a.mask, b.mask) and torch.equal(a.visible, b.visible)
    kept = noise <= noise.kthvalue(8, dim=1, keepdim=True).values
    assert torch.equal(a.mask, (~kept).float())


def test_generator_repeats_exactly():
    x = torch.randn(4, 49, 2)
    a = random_masking(x, 0.75, generator=torch.Generator().manual_seed(3))
    b = random_masking(x, 0.75, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.mask, b.mask)


def test_bad_noise_shape():
    with pytest.raises(ValueError, match=r"noise must have shape \(B, L\) = \(2, 16\)"):
        random_masking(torch.zeros(2, 16, 3), 0.5, noise=torch.rand(2, 15))


@pytest.mark.parametrize("ratio", [0.5, 0.75, 0.9])
@pytest.mark.parametrize("side", [8, 14])
def test_block_masking_exact_count_and_blocky(ratio, side):
    L = side * side
    g = torch.Generator().manual_seed(0)
    noise = block_noise(16, side, ratio, generator=g)
    _, mask, _, _ = random_masking(torch.zeros(16, L, 1), ratio, noise=noise)
    K = int(L * (1 - ratio))
    assert mask.sum(1).tolist() == [L - K] * 16
    # Blocks: hidden patches have many hidden neighbours, far more than random masking gives.
    def neighbour_agreement(m):
        m = m.view(-1, side, side)
        return ((m[:, 1:] == m[:, :-1]).float().mean() + (m[:, :, 1:] == m[:, :, :-1]).float().mean()) / 2
    _, rand_mask, _, _ = random_masking(torch.zeros(16, L, 1), ratio, generator=g)
    assert neighbour_agreement(mask) > neighbour_agreement(rand_mask) + 0.05


def test_grid_masking_keeps_one_in_four():
    noise = grid_noise(4, 8, 0.75, generator=torch.Generator().manual_seed(0))
    _, mask, _, _ = random_masking(torch.zeros(4, 64, 1), 0.75, noise=noise)
    grid = mask.view(4, 8, 8)
    for b in range(4):
        visible = torch.nonzero(grid[b] == 0)
        assert len(visible) == 16
        rows, cols = visible[:, 0], visible[:, 1]
        assert len(set((rows % 2).tolist())) == 1 and len(set((cols % 2).tolist())) == 1


def test_sample_noise_dispatch_and_error():
    for kind in ("random", "block", "grid"):
        assert sample_noise(kind, 2, 8, 0.75).shape == (2, 64)
    with pytest.raises(ConfigError, match="Did you mean 'grid'"):
        sample_noise("gird", 2, 8, 0.75)
