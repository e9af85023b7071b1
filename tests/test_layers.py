import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from mae.layers import EXPLICIT_ATTENTION_MAX_KEYS, MLP, Attention, Block, attention


def reference_attention(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """Plain softmax(QK^T / sqrt(d)) V with separate heads, written out."""
    B, N, D = x.shape
    h = attn.heads
    q, k, v = attn.qkv(x).split(D, dim=-1)
    split = lambda t: t.view(B, N, h, D // h).transpose(1, 2)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    weights = torch.softmax(q @ k.transpose(-1, -2) / (D // h) ** 0.5, dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(B, N, D)
    return attn.proj(out)


def test_attention_matches_written_out_softmax():
    torch.manual_seed(0)
    attn = Attention(32, 4)
    x = torch.randn(3, 7, 32)
    torch.testing.assert_close(attn(x), reference_attention(attn, x), rtol=1e-5, atol=1e-5)


def test_attention_is_permutation_equivariant():
    """No positions inside attention: permuting tokens permutes the output (why MAE can drop
    tokens freely once each carries its positional embedding)."""
    torch.manual_seed(0)
    block = Block(32, 4)
    x = torch.randn(2, 9, 32)
    perm = torch.randperm(9)
    torch.testing.assert_close(block(x)[:, perm], block(x[:, perm]), rtol=1e-5, atol=1e-5)


def test_block_is_pre_norm_residual():
    torch.manual_seed(0)
    block = Block(16, 2, mlp_ratio=2.0)
    x = torch.randn(2, 5, 16)
    h = x + block.attn(block.norm1(x))
    torch.testing.assert_close(block(x), h + block.mlp(block.norm2(h)))
    assert block.mlp.fc1.out_features == 32


def test_mlp_uses_exact_gelu():
    mlp = MLP(4, 8)
    x = torch.randn(3, 4)
    expected = mlp.fc2(torch.nn.functional.gelu(mlp.fc1(x), approximate="none"))
    torch.testing.assert_close(mlp(x), expected)


@pytest.mark.parametrize("tokens", [5, EXPLICIT_ATTENTION_MAX_KEYS,
                                    EXPLICIT_ATTENTION_MAX_KEYS + 1])
def test_both_attention_paths_compute_the_same_function(tokens):
    """Written out below the key-count threshold, the fused kernel above it: both agree with
    torch's reference math, values and gradients."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, tokens, 8, dtype=torch.float64, requires_grad=True)
               for _ in range(3))
    out = attention(q, k, v)
    with sdpa_kernel(SDPBackend.MATH):
        ref = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    ours = torch.autograd.grad(out, (q, k, v), g)
    theirs = torch.autograd.grad(ref, (q, k, v), g)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)


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
    torch.testing.assert_close(block(x, queries=queries), expected)


def test_block_with_an_int_query_start_equals_the_full_block_from_there():
    torch.manual_seed(0)
    block = Block(32, 4).double()
    x = torch.randn(3, 11, 32, dtype=torch.float64)
    torch.testing.assert_close(block(x, queries=4), block(x)[:, 4:])


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_block_on_a_table_tail_equals_the_block_on_the_gathered_sequence(qkv_bias):
    """forward_table_tail projects each table row once; values and gradients (of the block's
    weights, the head and the table) are those of the block on the concatenated sequence."""
    torch.manual_seed(0)
    block = Block(32, 4, qkv_bias=qkv_bias).double()
    head = torch.randn(3, 5, 32, dtype=torch.float64, requires_grad=True)
    table = torch.randn(9, 32, dtype=torch.float64, requires_grad=True)
    index = torch.stack([torch.randperm(9)[:6] for _ in range(3)])  # (B, M), rows may repeat
    index[0, 1] = index[0, 0]
    ours = block.forward_table_tail(head, table, index)
    ref = block(torch.cat([head, table[index]], dim=1))
    torch.testing.assert_close(ours, ref)
    g = torch.randn_like(ref)
    inputs = (head, table, *block.parameters())
    for a, b in zip(torch.autograd.grad(ours, inputs, g), torch.autograd.grad(ref, inputs, g)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("n", [2, 3])
def test_split_heads_has_autograds_values_and_gradients(n):
    """SplitHeads writes the gradient straight into the projection's layout; values and
    gradients equal autograd's view / permute / unbind, also when an output is unused."""
    from mae.layers import SplitHeads

    x = torch.randn(2, 5, n * 4 * 3, dtype=torch.float64, requires_grad=True)
    ours = SplitHeads.apply(x, n, 4)
    ref = x.view(2, 5, n, 4, 3).permute(2, 0, 3, 1, 4).unbind(0)
    assert all(torch.equal(a, b) and a.shape == (2, 4, 5, 3) for a, b in zip(ours, ref))
    weights = [torch.randn(2, 4, 5, 3, dtype=torch.float64) for _ in range(n)]
    for used in (range(n), range(n - 1)):  # every output, or the last one unused
        loss = lambda outs: sum((outs[i] * weights[i]).sum() for i in used)  # noqa: E731
        (g_ours,) = torch.autograd.grad(loss(SplitHeads.apply(x, n, 4)), x)
        ref = x.view(2, 5, n, 4, 3).permute(2, 0, 3, 1, 4).unbind(0)
        (g_ref,) = torch.autograd.grad(loss(ref), x)
        assert torch.equal(g_ours, g_ref)
    assert torch.autograd.gradcheck(lambda t: SplitHeads.apply(t, n, 4), (x,))


def test_gelu_mlp_has_autograds_values_and_gradients():
    """The MLP's hand-written backward (GELU's derivative in place) against autograd on the same
    modules: values and every gradient, in float64; gradcheck too."""
    from mae import layers

    torch.manual_seed(0)
    mlp = MLP(8, 32).double()
    x = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 5, 8, dtype=torch.float64)
    inputs = (x, *mlp.parameters())
    ours = mlp(x)
    assert ours.grad_fn.name().startswith("GeluMLP")
    ref = mlp.fc2(mlp.act(mlp.fc1(x)))
    torch.testing.assert_close(ours, ref)
    for a, b in zip(torch.autograd.grad(ours, inputs, g), torch.autograd.grad(ref, inputs, g)):
        torch.testing.assert_close(a, b)
    fn = lambda t, *p: layers.GeluMLP.apply(t, *p)  # noqa: E731
    leaves = [t.detach().requires_grad_() for t in (x[:1, :2], *mlp.parameters())]
    assert torch.autograd.gradcheck(fn, leaves)
    with torch.no_grad():  # no graph to record: the plain modules
        torch.testing.assert_close(mlp(x), ref)


def test_written_backwards_can_be_switched_off(monkeypatch):
    from mae import layers

    monkeypatch.setattr(layers, "WRITTEN_BACKWARDS", False)
    x = torch.randn(2, 5, 8, requires_grad=True)
    assert "GeluMLP" not in MLP(8, 32)(x).grad_fn.name()
    q, _, _ = layers.SplitHeads.split(torch.randn(2, 5, 24, requires_grad=True), 3, 4)
    assert "SplitHeads" not in q.grad_fn.name()
