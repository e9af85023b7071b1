"""The matmul ceiling of a train step: the rate a step made of nothing but its own matrix
products would reach.

`% of peak` in the train-step table compares a step with one large square matmul (1024^3 or
2048^3 on CPU). A step's products are smaller and thinner (K = 128-768 on the benchmarked
shapes), and the BLAS kernels do not run them at the square matmul's rate. This section
captures every product one `mae` train step runs, at its own shapes and strides (aten ``mm`` /
``addmm`` / ``bmm``, and the attention kernel's two forward and four backward batched products
per call), replays each alone on fresh tensors, and divides their FLOPs by their summed time:
the ceiling. The share of the peak that a step can reach is below the ceiling's share by the
time the step spends outside matmuls (softmax, GELU, LayerNorm, copies, the optimizer).
"""

from __future__ import annotations

import statistics
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from common import Stepper, median_seconds

aten = torch.ops.aten
# The fused attention kernels (CPU flash; CUDA flash, memory-efficient, cuDNN) and their backwards.
_KERNELS = ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
            "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention")
_SDPA = {getattr(aten, n) for n in _KERNELS if hasattr(aten, n)}
_SDPA_BACKWARD = {getattr(aten, f"{n}_backward") for n in _KERNELS
                  if hasattr(aten, f"{n}_backward")}

# One product: (op, shape and strides of each operand); op is "mm" or "bmm".
Operand = tuple[tuple[int, ...], tuple[int, ...]]
Product = tuple[str, Operand, Operand]


def _operand(t: torch.Tensor) -> Operand:
    return tuple(t.shape), tuple(t.stride())


def _contiguous(*shape: int) -> Operand:
    return _operand(torch.empty(shape, device="meta"))


def _attention_products(q: torch.Tensor, k: torch.Tensor, backward: bool) -> list[Product]:
    """The batched products of softmax(q k^T) v for q (B, h, N, d), k and v (B, h, M, d): the
    forward's two (q k^T, p v), or the backward's four (dv = p^T do, dp = do v^T, dq = ds k,
    dk = ds^T q), as contiguous (B h)-batched matmuls."""
    B, h, N, d = q.shape
    M, b = k.shape[2], B * h

    def bmm(m, kk, n):
        return ("bmm", _contiguous(b, m, kk), _contiguous(b, kk, n))
    if not backward:
        return [bmm(N, d, M), bmm(N, M, d)]
    return [bmm(M, N, d), bmm(N, d, M), bmm(N, M, d), bmm(M, N, d)]


class _Capture(TorchDispatchMode):
    """Records the products of every op dispatched while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.products: Counter[Product] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = func.overloadpacket
        if packet in (aten.mm, aten.bmm):
            self.products[(packet.__name__, _operand(args[0]), _operand(args[1]))] += 1
        elif packet is aten.addmm:  # bias + a @ b
            self.products[("mm", _operand(args[1]), _operand(args[2]))] += 1
        elif packet in _SDPA:
            for p in _attention_products(args[0], args[1], backward=False):
                self.products[p] += 1
        elif packet in _SDPA_BACKWARD:  # (grad_out, q, k, v, ...)
            for p in _attention_products(args[1], args[2], backward=True):
                self.products[p] += 1
        return func(*args, **(kwargs or {}))


def flops(p: Product) -> int:
    (a, _), (b, _) = p[1], p[2]
    if p[0] == "mm":
        return 2 * a[0] * a[1] * b[1]
    return 2 * a[0] * a[1] * a[2] * b[2]


def capture(stepper: Stepper) -> Counter[Product]:
    """The products of one train step of ``stepper`` (forward, backward, optimizer), counted."""
    with _Capture() as c:
        stepper.step()
    return c.products


def _tensor(operand, device, dtype) -> torch.Tensor:
    shape, stride = operand
    return torch.empty_strided(shape, stride, device=device, dtype=dtype).normal_()


def replay_time(products: Counter[Product], device: torch.device, dtype: torch.dtype,
                repeats: int) -> float:
    """Seconds that the products take run alone: each distinct product timed ``repeats`` times
    after one untimed call, its median times its count, summed."""
    total = 0.0
    for p, count in products.items():
        a, b = _tensor(p[1], device, dtype), _tensor(p[2], device, dtype)
        op = torch.mm if p[0] == "mm" else torch.bmm
        total += count * median_seconds(lambda: op(a, b), repeats, device)
    return total


def ceiling(stepper: Stepper, shape: str, dtype: torch.dtype, rounds: int, repeats: int,
            probe) -> dict:
    """The ceiling row of one shape: the products of a step replayed ``rounds`` times, each round
    followed by a peak probe; the median rate and its share of the median peak."""
    products = capture(stepper)
    total = sum(flops(p) * n for p, n in products.items())
    rates = []
    for _ in range(rounds):
        rates.append(total / replay_time(products, stepper.device, dtype, repeats) / 1e9)
        probe()
    rate, peak = statistics.median(rates), probe.take()
    return dict(section="matmul_ceiling", shape=shape, impl=stepper.impl, batch=stepper.batch,
                step_gflop_per_image=total / stepper.batch / 1e9, achieved_gflops=rate,
                peak_gflops=peak, pct_of_peak=100 * rate / peak,
                gflops_spread=(max(rates) - min(rates)) / 2, products=len(products),
                calls=sum(products.values()))
