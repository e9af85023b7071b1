import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from mae.layers import MLP, Attention, Block


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


def test_attention_gradients_equal_the_math_backend():
    """The fused kernel's gradients are those of the plain formula (float64)."""
    torch.manual_seed(0)
    attn = Attention(32, 4).double()
    x = torch.randn(2, 9, 32, dtype=torch.float64, requires_grad=True)
    out = attn(x)
    with sdpa_kernel(SDPBackend.MATH):
        ref = reference_attention(attn, x)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    inputs = (x, *attn.parameters())
    for a, b in zip(torch.autograd.grad(out, inputs, g), torch.autograd.grad(ref, inputs, g)):
        torch.testing.assert_close(a, b)


def test_attend_in_bf16_on_cpu_is_the_fused_kernels_formula():
    """`attend` takes two plain products in bf16 on a CPU (faster there than torch's fused bf16
    kernel) and the fused kernel otherwise: the same values, forward and backward, within bf16's
    rounding; float32 runs the fused kernel itself."""
    from mae.layers import attend

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(4, 2, 17, 32, generator=g) for _ in range(3))
    torch.testing.assert_close(attend(q, k, v), F.scaled_dot_product_attention(q, k, v),
                               rtol=0, atol=0)
    grads = []
    for fn in (attend, F.scaled_dot_product_attention):
        leaves = [t.to(torch.bfloat16).requires_grad_() for t in (q, k, v)]
        out = fn(*leaves)
        out.float().square().sum().backward()
        grads.append((out.float(), *(t.grad.float() for t in leaves)))
    for ours, fused in zip(*grads, strict=True):
        torch.testing.assert_close(ours, fused, rtol=0.05, atol=0.05)


def test_attention_under_cpu_bf16_autocast_matches_float32():
    torch.manual_seed(0)
    attn = Attention(64, 2)
    x = torch.randn(3, 17, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = attn(x)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), attn(x), rtol=0.05, atol=0.05)
