"""Transformer building blocks: multi-head self-attention, MLP, pre-norm block (ViT)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .masking import gather_tokens


# On CPU, attention over a few dozen keys is faster written out (two batched matmuls and a
# softmax over the whole batch) than through the fused kernel, which works in tiles per sample
# and head that are too small to pay at this length; from a few hundred keys on, the fused
# kernel wins (it never writes the N x N weights to memory). Measured by benchmarks/bench.py and
# benchmarks/speedups.py on 2 cores: at `micro` (17 and 65 keys) the written-out form makes the
# whole train step 0-13 % faster, depending on the run and on whether other models share the
# process; at `tiny`'s decoder (257 keys) it is about twice as slow per block.
EXPLICIT_ATTENTION_MAX_KEYS = 128

# Two backward passes written by hand (`SplitHeads`, `GeluMLP`): the same gradients as autograd's,
# with fewer passes over memory. False uses autograd's own (benchmarks/speedups.py compares).
WRITTEN_BACKWARDS = True


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v: q (B, h, M, d), k and v (B, h, N, d) -> (B, h, M, d).

    The same function either way; the implementation is picked by device and key count (see
    `EXPLICIT_ATTENTION_MAX_KEYS`). On GPU it is always `F.scaled_dot_product_attention`, which
    dispatches to flash / memory-efficient kernels.
    """
    if q.device.type == "cpu" and k.shape[-2] <= EXPLICIT_ATTENTION_MAX_KEYS:
        weights = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (B, h, M, N)
        return weights.softmax(dim=-1) @ v
    return F.scaled_dot_product_attention(q, k, v)


def select_tokens(x: torch.Tensor, queries: torch.Tensor | int) -> torch.Tensor:
    """The tokens a ``queries`` argument names: a (B, M) index, or an int ``s`` for the tokens
    from position s on (a view, no copy). (B, N, D) -> (B, M, D)."""
    return x[:, queries:] if isinstance(queries, int) else gather_tokens(x, queries)


class SplitHeads(torch.autograd.Function):
    """Projected tokens (B, N, n * h * d) -> n tensors (B, h, N, d), views of the input.

    The same as ``x.view(B, N, n, h, d).permute(2, 0, 3, 1, 4).unbind(0)``, but autograd would
    take that backwards as a stack of the n gradients into a new tensor and then a copy back to
    the projection's layout; here the gradients are written into that layout directly, one pass
    instead of two.
    """

    @staticmethod
    def views(x: torch.Tensor, n: int, heads: int) -> tuple[torch.Tensor, ...]:
        """(B, N, n * h * d) -> n x (B, h, N, d) views, with autograd's own backward."""
        B, N, C = x.shape
        return x.view(B, N, n, heads, C // (n * heads)).permute(2, 0, 3, 1, 4).unbind(0)

    @staticmethod
    def split(x: torch.Tensor, n: int, heads: int) -> tuple[torch.Tensor, ...]:
        """(B, N, n * h * d) -> n x (B, h, N, d), with the written backward by default."""
        return SplitHeads.apply(x, n, heads) if WRITTEN_BACKWARDS else SplitHeads.views(x, n, heads)

    @staticmethod
    def forward(ctx, x: torch.Tensor, n: int, heads: int) -> tuple[torch.Tensor, ...]:
        ctx.shape = (*x.shape[:2], n, heads, x.shape[2] // (n * heads))  # (B, N, n, h, d)
        return SplitHeads.views(x, n, heads)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        B, N, n, h, d = ctx.shape
        grad = grads[0].new_empty(ctx.shape)  # unused outputs get zero gradients, not None
        for i, g in enumerate(grads):
            grad[:, :, i].copy_(g.transpose(1, 2))  # (B, N, h, d)
        return grad.view(B, N, n * h * d), None, None


class Attention(nn.Module):
    """Multi-head self-attention with one fused QKV projection."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads.")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, queries: torch.Tensor | int | None = None) -> torch.Tensor:
        """(B, N, D) -> (B, N, D).

        With ``queries`` (see `select_tokens`: a (B, M) index, or an int s for the tokens from
        s on), only those tokens are updated: they attend to all N tokens as before, but
        queries, output projection and what follows are computed for M tokens, not N.
        (B, N, D) -> (B, M, D), in the order of ``queries``.
        """
        if queries is None:
            return self.attend(self.qkv(x))
        B, N, D = x.shape
        h, d = self.heads, D // self.heads
        w, b = self.qkv.weight, self.qkv.bias  # rows: q, k, v
        kv = F.linear(x, w[D:], None if b is None else b[D:])  # (B, N, 2D)
        k, v = SplitHeads.split(kv, 2, h)  # 2 x (B, h, N, d)
        q = F.linear(select_tokens(x, queries), w[:D], None if b is None else b[:D])  # (B, M, D)
        q = q.view(B, -1, h, d).transpose(1, 2)  # (B, h, M, d)
        x = attention(q, k, v).transpose(1, 2).reshape(B, -1, D)  # (B, M, D)
        return self.proj(x)

    def attend(self, qkv: torch.Tensor) -> torch.Tensor:
        """Attention and output projection from already projected tokens: (B, N, 3D), laid out
        as ``self.qkv``'s output, -> (B, N, D)."""
        B, N, D3 = qkv.shape
        q, k, v = SplitHeads.split(qkv, 3, self.heads)  # 3 x (B, h, N, d)
        x = attention(q, k, v).transpose(1, 2).reshape(B, N, D3 // 3)  # (B, N, D)
        return self.proj(x)


class GeluMLP(torch.autograd.Function):
    """fc2(gelu(fc1(x))) for (..., D) inputs, with GELU's derivative applied in place in the
    backward pass (autograd allocates a new tensor of the hidden width for it). Together with
    `SplitHeads` 1-3 % of a train step on CPU (benchmarks/speedups.py). Used when gradients are
    recorded without autocast (which casts inside the ops); otherwise `MLP` runs its modules."""

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2):
        x2 = x.reshape(-1, x.shape[-1])  # (R, D)
        h = torch.addmm(b1, x2, w1.t())  # (R, H)
        a = F.gelu(h)  # (R, H)
        ctx.save_for_backward(x2, h, a, w1, w2)
        ctx.shape = x.shape
        return torch.addmm(b2, a, w2.t()).view(*x.shape[:-1], w2.shape[0])

    @staticmethod
    def backward(ctx, grad):
        x2, h, a, w1, w2 = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])  # (R, D_out)
        grad_w2, grad_b2 = g.t() @ a, g.sum(0)
        ga = g @ w2  # (R, H)
        gh = torch.ops.aten.gelu_backward.grad_input(ga, h, grad_input=ga)  # in place
        grad_x = (gh @ w1).view(ctx.shape) if ctx.needs_input_grad[0] else None
        return grad_x, gh.t() @ x2, gh.sum(0), grad_w2, grad_b2


class MLP(nn.Module):
    """Linear -> GELU -> Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (WRITTEN_BACKWARDS and torch.is_grad_enabled()
                and not torch.is_autocast_enabled(x.device.type)):
            return GeluMLP.apply(x, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias)
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth: drop a sample's whole residual branch with probability p (training only),
    scaling kept branches by 1 / (1 - p). Used for fine-tuning (appendix A.3), not pre-training."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = x.new_empty(x.shape[0], *([1] * (x.ndim - 1))).bernoulli_(1 - self.p)  # (B, 1, 1)
        return x * keep / (1 - self.p)


class Block(nn.Module):
    """Pre-norm Transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(
        self, dim: int, heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
        eps: float = 1e-6, drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, queries: torch.Tensor | int | None = None) -> torch.Tensor:
        """(B, N, D) -> (B, N, D); with ``queries`` (a (B, M) index or an int start, see
        `select_tokens`), only those tokens are computed (they still attend to all N):
        (B, N, D) -> (B, M, D)."""
        residual = x if queries is None else select_tokens(x, queries)  # (B, M, D)
        x = residual + self.drop_path(self.attn(self.norm1(x), queries))  # (B, M, D)
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def forward_table_tail(
        self, head: torch.Tensor, table: torch.Tensor, index: torch.Tensor,
    ) -> torch.Tensor:
        """The block on ``cat([head, table[index]])``, with the tail's norm and QKV projection
        computed once per table row instead of once per token.

        The MAE decoder's input is such a sequence: each mask token is the same learned vector
        plus its position's embedding, a row of one (L, D) table shared by the whole batch. Its
        first block's queries, keys and values for those tokens depend on the position only.

        Args:
            head: (B, N, D) tokens that differ per sample (CLS and visible tokens).
            table: (T, D) the possible tail tokens.
            index: (B, M) rows of ``table`` that follow ``head`` in each sample.

        Returns:
            (B, N + M, D), the same values as ``self(torch.cat([head, table[index]], dim=1))``.
        """
        x = torch.cat([head, F.embedding(index, table)], dim=1)  # (B, N + M, D)
        qkv = torch.cat([self.attn.qkv(self.norm1(head)),  # (B, N, 3D)
                         F.embedding(index, self.attn.qkv(self.norm1(table)))], dim=1)
        x = x + self.drop_path(self.attn.attend(qkv))  # (B, N + M, D)
        return x + self.drop_path(self.mlp(self.norm2(x)))


def init_weights(module: nn.Module) -> None:
    """The reference initialisation: xavier-uniform linears with zero bias, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
