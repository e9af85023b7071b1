"""Where `mae`'s train-step speed comes from: each optimisation switched off in turn, in one run.

    python benchmarks/speedups.py            # micro, tiny, vit-b-d4 here (~4 min on 2 cores)
    python benchmarks/speedups.py --smoke    # seconds: checks that it runs

Variants, timed step by step in turn (one step of each per round, bench.py's `interleave`):

- ``mae``: the training step as ``mae.train`` runs it;
- ``fused attention only``: `F.scaled_dot_product_attention` at every sequence length (no
  written-out attention for short key sequences on CPU, ``mae.layers.EXPLICIT_ATTENTION_MAX_KEYS``);
- ``autograd's backward``: autograd's own backward for the head split and the MLP instead of
  the hand-written ones (``mae.layers.WRITTEN_BACKWARDS``: `SplitHeads`, `GeluMLP`);
- ``every prediction``: ``return_pred=True``, the decoder as ``Decoder.forward`` runs it (tokens
  put back in patch order, each mask token projected per sample, the last block and pixel head
  on all patches) instead of ``Decoder.forward_hidden``;
- ``for-loop AdamW``: torch's AdamW without its fused kernel.

Each variant's images/s and the per-round ratio ``mae`` / variant (median, +/- half the
interquartile range) are printed and written to ``results/benchmarks/<device>-speedups.md``.

The variants share one process there, as bench.py's implementations do. A training run has a
process of its own, and the allocator's state can change what a variant costs (during
development, at `micro`: written-out vs fused attention 13 % apart with one model per process,
0-5 % apart with the five variants' models in one). So a second table times each variant in fresh processes, ``--isolated`` rounds of them, the
variants in turn within a round; its ratio is the median over rounds of the ratio of the
processes' median step times.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from mae import layers
from mae.provenance import device_name, git_state, write_text_atomic
from mae.runtime import autocast_dtype, pick_device

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import (  # noqa: E402
    SHAPES, SMOKE, Stepper, device_slug, interleave, paired_ratio, rotated, summary,
)

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {  # name: (mae.layers settings, Stepper options)
    "mae": ({}, {}),
    "fused attention only": ({"EXPLICIT_ATTENTION_MAX_KEYS": 0}, {}),
    "autograd's backward": ({"WRITTEN_BACKWARDS": False}, {}),
    "every prediction": ({}, {"return_pred": True}),
    "for-loop AdamW": ({}, {"fused_optimizer": False}),
}


class VariantStepper(Stepper):
    """mae's step with some `mae.layers` settings changed for its own steps only."""

    def __init__(self, *args, settings: dict | None = None, **kwargs) -> None:
        super().__init__("mae", *args, **kwargs)
        self.settings = settings or {}

    def step(self) -> float:
        defaults = {k: getattr(layers, k) for k in self.settings}
        for k, v in self.settings.items():
            setattr(layers, k, v)
        try:
            return super().step()
        finally:
            for k, v in defaults.items():
                setattr(layers, k, v)


def steppers(name: str, device: torch.device, smoke: bool,
             variants: list[str]) -> tuple[dict[str, VariantStepper], int]:
    """A VariantStepper per variant at one shape, and the batch size."""
    shape = SHAPES[name]
    config, batch = shape.config(**(SMOKE if smoke else {})), shape.batch(device, smoke)
    amp = autocast_dtype("auto", device)
    return {v: VariantStepper(config, batch, device, amp, settings=VARIANTS[v][0], **VARIANTS[v][1])
            for v in variants}, batch


def _child(name: str, variant: str, steps: int, warmup: int, smoke: bool) -> None:
    """One variant in this fresh process: prints its step times as JSON."""
    device = torch.device("cpu") if smoke else pick_device("auto")
    s = steppers(name, device, smoke, [variant])[0][variant]
    for _ in range(warmup):
        s.step()
    print(json.dumps({"batch": s.batch, "times": [s.step() for _ in range(steps)]}))


def isolated(name: str, rounds: int, steps: int, warmup: int, smoke: bool,
             threads: int | None) -> tuple[dict[str, list[float]], int]:
    """Each variant in a fresh process per round (the order rotating): per variant, the median
    step time of each of its processes; and the batch size."""
    per: dict[str, list[float]] = {v: [] for v in VARIANTS}
    batch = 0
    for r in range(rounds):
        for v in rotated(list(VARIANTS), r):
            cmd = [sys.executable, __file__, "--_child", name, v, str(steps), str(warmup)]
            cmd += (["--smoke"] if smoke else []) + (["--threads", str(threads)] if threads else [])
            out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
            if out.returncode:
                raise RuntimeError(f"{name} / {v} failed:\n{out.stderr[-1500:]}")
            got = json.loads(out.stdout.strip().splitlines()[-1])
            batch = got["batch"]
            per[v].append(statistics.median(got["times"]))
    return per, batch


TABLE = ["| shape | variant | images/s | +/- | mae / variant (per round) | +/- |",
         "|---|---|---|---|---|---|"]


def table_rows(name: str, times: dict[str, list[float]], batch: int) -> list[str]:
    """Print and return the table rows of one shape: images/s per variant and the per-round
    ratio mae / variant (rounds pair the variants' times)."""
    rows = []
    for v, ts in times.items():
        rate, spread = summary(ts, batch)
        ratio, rspread = paired_ratio(times["mae"], ts)
        print(f"  {v:<22} {rate:9.1f} images/s +/- {spread:.1f}   mae / this = "
              f"{ratio:.3f}x +/- {rspread:.3f}")
        rows.append(f"| {name} | {v} | {rate:,.1f} | {spread:,.1f} | {ratio:.3f}x | {rspread:.3f} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    p.add_argument("--configs", default="micro,tiny,vit-b-d4", help="comma-separated shapes")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--repeats", type=int, default=11, help="timed rounds (default: 11)")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "benchmarks",
                   help="folder for <device>-speedups.md (default: results/benchmarks)")
    p.add_argument("--isolated", type=int, default=3,
                   help="rounds of fresh processes per variant for the second table (0: skip)")
    p.add_argument("--smoke", action="store_true", help="toy shapes, one round: checks it runs")
    p.add_argument("--_child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._child:
        name, variant, steps, warmup = args._child
        _child(name, variant, int(steps), int(warmup), args.smoke)
        return 0
    device = pick_device(args.device)
    warmup, repeats = (1, 1) if args.smoke else (2, args.repeats)
    lines = [f"# Where the speed comes from: {device_name(str(device))}", "",
             f"- git commit: {git_state()['git_commit']}"
             + (" (uncommitted changes)" if git_state()["git_dirty"] else ""),
             f"- torch {torch.__version__}, {repeats} rounds after {warmup} of warm-up", "",
             *TABLE]
    shapes = [s.strip() for s in args.configs.split(",") if s.strip()]
    for name in shapes:
        variant_steppers, batch = steppers(name, device, args.smoke, list(VARIANTS))
        times, _ = interleave(variant_steppers, warmup, repeats, probe=None)
        print(f"{name} ({SHAPES[name].note}), batch {batch}")
        lines += table_rows(name, times, batch)
    if args.isolated:
        rounds, steps, iso_warmup = (1, 1, 1) if args.smoke else (args.isolated, 5, 2)
        lines += ["", f"Each variant in a process of its own: {rounds} rounds of fresh processes "
                  f"({iso_warmup} warm-up steps, median of {steps} steps each).", "", *TABLE]
        for name in shapes:
            print(f"{name}, each variant in fresh processes ({rounds} rounds)", flush=True)
            per, batch = isolated(name, rounds, steps, iso_warmup, args.smoke, args.threads)
            lines += table_rows(name, per, batch)
    slug = device_slug(device) + ("-smoke" if args.smoke else "")
    out = args.out / f"{slug}-speedups.md"
    write_text_atomic(out, "\n".join(lines) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
