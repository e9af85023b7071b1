import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from mae import patchify, unpatchify


@settings(max_examples=60, deadline=None)
@given(B=st.integers(1, 3), C=st.integers(1, 4), p=st.integers(1, 5), h=st.integers(1, 5),
       w=st.integers(1, 5))
def test_unpatchify_inverts_patchify(B, C, p, h, w):
    x = torch.randn(B, C, h * p, w * p)
    patches = patchify(x, p)
    assert patches.shape == (B, h * w, p * p * C)
    assert torch.equal(unpatchify(patches, p, grid=(h, w), channels=C), x)


@settings(max_examples=30, deadline=None)
@given(B=st.integers(1, 3), L_side=st.integers(1, 6), p=st.integers(1, 4))
def test_patchify_inverts_unpatchify(B, L_side, p):
    patches = torch.randn(B, L_side * L_side, p * p * 3)
    assert torch.equal(patchify(unpatchify(patches, p), p), patches)


def test_layout_matches_unfold():
    """Independent check with F.unfold: each patch is its pixels row by row, channels last."""
    x = torch.randn(2, 3, 12, 8)
    p = 4
    cols = F.unfold(x, kernel_size=p, stride=p)  # (B, C*p*p, L), channel-major
    expected = cols.reshape(2, 3, p * p, -1).permute(0, 3, 2, 1).reshape(2, -1, p * p * 3)
    assert torch.equal(patchify(x, p), expected)


def test_patch_index_is_row_major():
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 4:8, 0:4] = 1  # bottom-left patch of a 2x2 grid
    assert patchify(x, 4).sum(-1).tolist() == [[0, 0, 16, 0]]


def test_errors():
    with pytest.raises(ValueError, match="not divisible by patch_size 5"):
        patchify(torch.zeros(1, 3, 32, 32), 5)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        patchify(torch.zeros(3, 32, 32), 4)
    with pytest.raises(ValueError, match="square grid"):
        unpatchify(torch.zeros(1, 6, 48), 4)
    with pytest.raises(ValueError, match="patch width"):
        unpatchify(torch.zeros(1, 4, 50), 4)
