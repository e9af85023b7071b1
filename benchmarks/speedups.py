"""Where `mae`'s train-step speed comes from: each optimisation switched off in turn, in one run.

    python benchmarks/speedups.py            # micro, tiny, vit-b-d4 on the best device
    python benchmarks/speedups.py --smoke    # seconds: checks that it runs

Variants, timed step by step in turn (one step of each per round, common.py's `interleave`):

- ``mae``: the training step as ``mae.train`` runs it, the loss from
  ``mae.hidden.hidden_patch_loss``: the hidden patches predicted only (how, in mae/hidden.py);
- ``every prediction``: ``model(x, noise=noise).loss``, the full ``MAE.forward`` (the decoder as
  ``Decoder.forward`` runs it: tokens put back in patch order, each mask token projected per
  sample, the last block and pixel head on all patches); the same loss and gradients;
- ``for-loop AdamW``: torch's AdamW without its fused kernel.

Each variant's images/s and the per-round ratio ``mae`` / variant (median, +/- half the
interquartile range) are printed and written to ``results/benchmarks/<device>-speedups.md``
(``--smoke``: a temporary folder unless ``--out`` is given).

The variants share one process there, as bench.py's implementations do. A training run has a
process of its own, and what a variant costs may differ with the other variants' models in the
same process (the allocator's state). So a second table times each variant in fresh processes,
``--isolated`` rounds of them, the variants in turn within a round; its ratio is the median
over rounds of the ratio of the processes' median step times.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHAPES, SMOKE, Stepper, interleave, paired_ratio, rotated, summary  # noqa: E402
from mae.provenance import device_name, git_state  # noqa: E402
from mae.runtime import autocast_dtype, pick_device  # noqa: E402
from report import SMOKE_OUT, write_markdown  # noqa: E402

VARIANTS = {  # name: Stepper options
    "mae": {},
    "every prediction": {"shortcut": False},
    "for-loop AdamW": {"fused_optimizer": False},
}


def steppers(name: str, device: torch.device, smoke: bool,
             variants: list[str]) -> tuple[dict[str, Stepper], int]:
    """mae's Stepper per variant at one shape, and the batch size."""
    shape = SHAPES[name]
    config, batch = shape.config(**(SMOKE if smoke else {})), shape.batch(device, smoke)
    amp = autocast_dtype("auto", device)
    return {v: Stepper("mae", config, batch, device, amp, **VARIANTS[v]) for v in variants}, batch


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
    p.add_argument("--out", type=Path, default=None,
                   help=f"folder for <device>-speedups.md (default: results/benchmarks; with "
                        f"--smoke {SMOKE_OUT})")
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
    write_markdown(lines, args.out, args.smoke, device, "speedups")
    return 0


if __name__ == "__main__":
    sys.exit(main())
