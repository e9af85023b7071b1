"""Where bf16 pays on this CPU: the two measurements behind mae's CPU bf16 choices, in one run.

    python benchmarks/bf16.py            # the attention kernels, then train steps by width
    python benchmarks/bf16.py --smoke    # seconds: checks that it runs

1. **Attention kernels** (`mae.layers.attend`): forward and backward of softmax(q k^T / sqrt(d)) v
   at the head shapes of the benchmark's models (micro, tiny, vit-b-d4: the encoder on the
   visible tokens, the decoder on all of them), torch's fused `scaled_dot_product_attention`
   against the same formula as two plain matrix products, in bf16 and in float32. mae uses the
   two products in bf16 on a CPU and the fused kernel everywhere else.
2. **Train steps by encoder width**: mae's train step (as `mae.train` runs it) of a micro model
   whose encoder is 128, 160, 192 or 256 wide (32-wide heads, 64 patches, batch 256), bf16
   autocast against float32, interleaved. `mae.runtime.CPU_BF16_MIN_WIDTH` is the narrowest width
   from which bf16 was faster here beyond the spread.

Times are medians of interleaved rounds (one call of each variant per round, the order rotating);
ratios are the medians of the per-round ratios, +/- half their interquartile range. Written to
``results/benchmarks/<device>-bf16.md``. A CPU without native bf16 (`cpu_has_native_bf16`) is
refused: there bf16 is emulated and mae never picks it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    SHAPES, SMOKE, Stepper, interleave, median_spread, paired_ratio, rotated, summary,
)
from mae.config import MAEConfig  # noqa: E402
from mae.layers import attention_probs  # noqa: E402
from mae.provenance import device_name, git_state  # noqa: E402
from mae.runtime import CPU_BF16_MIN_WIDTH, cpu_has_native_bf16  # noqa: E402
from report import write_markdown  # noqa: E402

WIDTHS = (128, 160, 192, 256)


def two_products(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return attention_probs(q, k) @ v  # mae.layers.attend's bf16 CPU path, at any precision


KERNELS = {"fused (sdpa)": F.scaled_dot_product_attention, "two products": two_products}


def head_shapes(smoke: bool) -> list[tuple[str, tuple[int, int, int, int]]]:
    """(label, (batch, heads, tokens, head width)) of each shape's encoder and decoder."""
    out = []
    for name in ("micro", "tiny", "vit-b-d4"):
        shape = SHAPES[name]
        c = shape.config(**(SMOKE if smoke else {}))
        b = shape.batch(torch.device("cpu"), smoke)
        visible = c.num_visible + 1  # and the CLS token
        out.append((f"{name} encoder", (b, c.encoder_heads, visible,
                                        c.encoder_dim // c.encoder_heads)))
        out.append((f"{name} decoder", (b, c.decoder_heads, c.num_patches + 1,
                                        c.decoder_dim // c.decoder_heads)))
    return out


def attention_times(shape: tuple[int, int, int, int], dtype: torch.dtype, warmup: int,
                    repeats: int) -> dict[str, list[float]]:
    """Seconds per forward + backward of each kernel, interleaved rounds."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(shape, generator=g).to(dtype).requires_grad_() for _ in range(3))

    def once(fn) -> float:
        t = time.perf_counter()
        fn(q, k, v).float().sum().backward()
        return time.perf_counter() - t

    times: dict[str, list[float]] = {name: [] for name in KERNELS}
    for _ in range(warmup):
        for fn in KERNELS.values():
            once(fn)
    for r in range(repeats):
        for name in rotated(list(KERNELS), r):
            times[name].append(once(KERNELS[name]))
    return times


def width_config(width: int, smoke: bool) -> MAEConfig:
    if smoke:
        return MAEConfig.preset("micro", **SMOKE)
    return MAEConfig.preset("micro", encoder_dim=width, encoder_heads=width // 32)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--repeats", type=int, default=15, help="timed rounds (default: 15)")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for <device>-bf16.md (default: results/benchmarks; with --smoke "
                        "a temporary folder)")
    p.add_argument("--smoke", action="store_true", help="toy shapes, two rounds: checks it runs")
    args = p.parse_args(argv)
    if not cpu_has_native_bf16():
        print("error: this CPU has no native bf16 (no avx512_bf16 or amx_bf16 flag), so mae never "
              "picks bf16 here and there is nothing to measure; MAE_CPU_BF16=1 forces the "
              "detection", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    warmup, repeats = (1, 2) if args.smoke else (3, args.repeats)
    state = git_state()
    lines = [f"# Where bf16 pays: {device_name('cpu')}", "",
             f"- git commit: {state['git_commit']}"
             + (" (uncommitted changes)" if state["git_dirty"] else ""),
             f"- torch {torch.__version__}, {repeats} rounds after {warmup} of warm-up",
             "- command: python benchmarks/bf16.py " + " ".join(argv or sys.argv[1:]), "",
             "## Attention, forward + backward (ms)", "",
             ("The fused kernel's time over the two products' (per round): above 1, the two "
             "products are faster."), "",
             ("| attention | (batch, heads, tokens, head width) | precision | fused ms | "
             "two products ms | fused / two products | +/- |"), "|---|---|---|---|---|---|---|"]
    for label, shape in head_shapes(args.smoke):
        for dtype, prec in ((torch.bfloat16, "bf16"), (torch.float32, "fp32")):
            t = attention_times(shape, dtype, warmup, repeats)
            fused, plain = (median_spread(t[n])[0] * 1e3 for n in KERNELS)
            ratio, spread = paired_ratio(t["two products"], t["fused (sdpa)"])
            print(f"{label:18s} {prec}: fused {fused:7.2f} ms, two products {plain:7.2f} ms, "
                  f"fused / two products {ratio:.2f}x +/- {spread:.2f}", flush=True)
            lines.append(f"| {label} | {shape} | {prec} | {fused:.2f} | {plain:.2f} | "
                         f"{ratio:.2f}x | {spread:.2f} |")
    lines += ["", "## Train steps, bf16 autocast against float32, by encoder width", "",
              ("micro with a wider encoder (32-wide heads), 64 patches, batch 256; mae's train "
              "step with its bf16 attention path."), "",
              "| encoder width | fp32 images/s | bf16 images/s | bf16 / fp32 (per round) | +/- |",
              "|---|---|---|---|---|"]
    device = torch.device("cpu")
    widths = WIDTHS[:1] if args.smoke else WIDTHS
    for width in widths:
        config = width_config(width, args.smoke)
        batch = 2 if args.smoke else 256
        steppers = {"fp32": Stepper("mae", config, batch, device, None),
                    "bf16": Stepper("mae", config, batch, device, torch.bfloat16)}
        times, _ = interleave(steppers, warmup, repeats, probe=None)
        (f32, _), (b16, _) = summary(times["fp32"], batch), summary(times["bf16"], batch)
        ratio, spread = paired_ratio(times["bf16"], times["fp32"])
        print(f"width {width}: fp32 {f32:.1f} images/s, bf16 {b16:.1f}, bf16 / fp32 "
              f"{ratio:.2f}x +/- {spread:.2f}", flush=True)
        lines.append(f"| {width} | {f32:,.1f} | {b16:,.1f} | {ratio:.2f}x | {spread:.2f} |")
    lines += ["", f"mae.runtime.CPU_BF16_MIN_WIDTH at this commit: {CPU_BF16_MIN_WIDTH}."]
    write_markdown(lines, args.out, args.smoke, device, "bf16")
    return 0


if __name__ == "__main__":
    sys.exit(main())
