"""Speed of `mae` against the implementations people would pick instead, measured in one run.

    python benchmarks/bench.py                 # everything, on the best device (make bench)
    python benchmarks/bench.py --smoke         # seconds: checks that every section runs
    python benchmarks/bench.py --device cuda --configs vit-b --compile both   # see gpu.sh

Sections, all in this one process (peak memory on CPU comes from short child processes):

1. matmul peak: the best median rate of large square matmuls, in each precision measured
   (``--precision``, default auto: bf16 on CUDA; float32 on a CPU, and bf16 too where the CPU
   multiplies it natively, see ``mae.runtime.cpu_has_native_bf16``).
2. train step (forward + backward + AdamW step) in images/s for `mae`, for transformers'
   ``ViTMAEForPreTraining`` (its default SDPA attention) and for vit-pytorch's ``MAE``, built
   at the same widths, depths, heads, patch size, mask ratio and decoder. vit-pytorch's MAE has
   no CLS token, so `mae` also runs at that architecture (``mae no-CLS``, ``cls_token=False``)
   and is compared with vit-pytorch as such; ``mae`` (with the paper's CLS token) is compared
   with transformers, which has one. The implementations are interleaved step by step (in an
   order that rotates from round to round) so that machine noise hits all of them alike;
   warm-up, then the median of repeated steps, with the spread (half the interquartile range)
   beside it.
3. achieved FLOP rate of our step (analytic FLOPs from ``mae.flops``) against section 1, and
   at each library's default (what a user gets without flags: `mae` with ``precision="auto"``,
   the peers in float32), the ratio of their medians.
4. encoder on visible patches only vs with mask tokens, at a ViT-L shape with depths / 4.
5. data pipeline (gather + batched crop / flip / resize + masks) against the train steps.
6. peak memory per configuration and implementation.
7. the matmul ceiling of our step at each shape: its own matrix products, captured at their
   shapes and replayed alone (ceiling.py), as a share of section 1's peak; the step's time over
   the time of those products is its overhead (1.0 would be nothing but matmuls).

Writes ``results/benchmarks/<device>.csv`` and ``.md`` (machine, versions, date) and prints the
ratios (ours / peer) last; ``--smoke`` writes ``<device>-smoke.*`` to a temporary folder unless
``--out`` is given. Peers that are not installed are skipped with a note
(``pip install -e ".[dev]"`` installs both).

The code: common.py (shapes, models, the timed step, interleaving, statistics), probes.py (the
measurements), ceiling.py (section 7), report.py (header, ratio lines, tables), this file (the
command line).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ceiling import ceiling  # noqa: E402
from common import IMPLS, SHAPES, VITL, Stepper, available, shape_config  # noqa: E402
from mae.runtime import (  # noqa: E402
    autocast_dtype, cpu_has_native_bf16, pick_device, precision_name,
)
from probes import (  # noqa: E402
    PeakProbe, compare, mask_token_speedup, matmul_peak, memory_child, peak_memory, pipeline_rate,
)
from report import (  # noqa: E402
    SMOKE_OUT, device_slug, output_folder, ratio_lines, run_header, write_report,
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    p.add_argument("--configs", default="micro,tiny,vit-b-d4",
                   help=f"comma-separated shapes from {sorted(SHAPES)} (default: %(default)s)")
    p.add_argument("--impls", default=",".join(IMPLS), help="comma-separated (default: all three)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per implementation")
    p.add_argument("--repeats", type=int, default=9, help="timed steps per implementation")
    p.add_argument("--batch", type=int, default=None, help="override every shape's batch size")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "both"], default="auto",
                   help="train-step precision(s), every implementation alike: auto = bf16 on "
                        "CUDA, float32 on a CPU plus bf16 where the CPU has it natively "
                        "(default: %(default)s)")
    p.add_argument("--compile", choices=["off", "on", "both"], default="off",
                   help="torch.compile the step's forward (both: measure with and without)")
    p.add_argument("--no-speedup", action="store_true", help="skip the ViT-L mask-token section")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory section")
    p.add_argument("--no-ceiling", action="store_true", help="skip the matmul-ceiling section")
    p.add_argument("--out", type=Path, default=None,
                   help=f"folder for <device>.csv and .md (default: results/benchmarks; with "
                        f"--smoke {SMOKE_OUT})")
    p.add_argument("--smoke", action="store_true",
                   help="seconds-long check that every section runs: tiny shapes, one step; "
                        "writes <device>-smoke.* (numbers meaningless)")
    p.add_argument("--_memory", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--_mask-tokens", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    if args._memory:
        impl, shape, batch = args._memory
        memory_child(impl, shape, int(batch), args.smoke, args._mask_tokens)
        return 0

    device = pick_device(args.device)
    amps = precisions(args.precision, device)  # autocast dtypes, None = float32
    shapes = [s.strip() for s in args.configs.split(",") if s.strip()]
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        p.error(f"unknown shape(s) {unknown}; choose from {sorted(SHAPES)}")
    impls = []
    for impl in [i.strip() for i in args.impls.split(",") if i.strip()]:
        if impl not in IMPLS:
            p.error(f"unknown implementation {impl!r}; choose from {list(IMPLS)}")
        why = available(impl)
        if why:
            print(f"skipping {why}")
        else:
            impls.append(impl)
    warmup, repeats = (1, 1) if args.smoke else (args.warmup, args.repeats)
    compile_modes = {"off": [False], "on": [True], "both": [False, True]}[args.compile]

    started = time.time()
    amp = amps[0]  # the mask-token section, the data pipeline and peak memory use the first
    header = run_header(device, amps, impls, argv)
    print(f"{header['machine']} | {header['precision']} | torch {torch.__version__}")

    sizes = [256] if args.smoke else ([4096, 8192] if device.type == "cuda" else [1024, 2048])
    rows: list[dict] = []
    probes = {}
    for prec in amps:
        peak_dtype = prec or torch.float32
        tag = precision_name(prec)
        peak = matmul_peak(device, peak_dtype, sizes, 2 if args.smoke else 10)
        header[f"matmul peak, {tag}"] = f"{peak['gflops']:,.0f} GFLOP/s ({peak['size']}^3)"
        print(f"matmul peak, {tag}: {header[f'matmul peak, {tag}']}")
        rows.append(dict(section="matmul_peak", shape=f"{peak['size']}^3", impl="torch.matmul",
                         precision=tag, achieved_gflops=peak["gflops"], pct_of_peak=100.0))
        probe = probes[tag] = PeakProbe(device, peak_dtype, peak["size"])
        for name in shapes:
            rows += train_steps(name, args, impls, device, prec, warmup, repeats, compile_modes,
                                probe)
    default_steps(rows, shapes, device)

    if not args.no_speedup:
        batch = args.batch or VITL.batch(device, args.smoke)
        print(f"encoder variants, {VITL.name} ({VITL.note}), batch {batch} ...", flush=True)
        # Steps of many seconds on CPU: fewer repeats, which the spread column shows.
        got = mask_token_speedup(VITL, batch, device, amp, min(warmup, 1), min(repeats, 5),
                                 args.smoke, probes[precision_name(amp)])
        for r in got:
            r["precision"] = precision_name(amp)
            print(f"  {r['impl']:<24} {r['images_per_s']:9.2f} images/s +/- {r['spread']:.2f}")
        rows += got

    probe_cfg = shape_config("tiny" if "tiny" in shapes else shapes[0], args.smoke)
    pipe = pipeline_rate(probe_cfg, 256 if not args.smoke else 8, 3 if args.smoke else 15, device)
    if pipe:
        print(f"data pipeline: {pipe['images_per_s']:,.0f} images/s +/- {pipe['spread']:,.0f}")
        rows.append(pipe)

    if not args.no_memory:
        print("peak memory ...", flush=True)
        peak_memory([r for r in rows if r.get("precision") == precision_name(amp)], device, amp,
                    args.smoke)

    ratios = ratio_lines(rows, shapes, impls, compile_modes, pipe)
    header["wall time"] = f"{time.time() - started:.0f} s"
    slug = device_slug(device) + ("-smoke" if args.smoke else "")
    md = write_report(rows, ratios, header, output_folder(args.out, args.smoke), slug)
    print(f"wrote {md} and {md.with_suffix('.csv')}")
    print("\n".join(["", "ratios (ours / peer):"] + ratios))
    return 0


def precisions(choice: str, device: torch.device) -> list[torch.dtype | None]:
    """The autocast dtypes to measure (None: float32), the one section 2's verdict uses first."""
    if choice == "auto":
        if device.type == "cuda":
            return [torch.bfloat16]
        return [None, torch.bfloat16] if cpu_has_native_bf16() else [None]
    return {"fp32": [None], "bf16": [torch.bfloat16], "both": [None, torch.bfloat16]}[choice]


def train_steps(name, args, impls, device, prec, warmup, repeats, compile_modes, probe):
    """Section 2 (and 7) at one shape and precision: the interleaved train steps of every
    implementation, then the matmul ceiling of mae's step with its overhead."""
    shape = SHAPES[name]
    config = shape_config(name, args.smoke)
    batch = args.batch or shape.batch(device, args.smoke)
    tag = precision_name(prec)
    print(f"train step, {name} ({shape.note}), batch {batch}, {tag} ...", flush=True)
    rows = compare(shape, config, impls, batch, device, prec, warmup, repeats, compile_modes,
                   probe)
    for r in rows:
        r["precision"] = tag
        print(f"  {r['impl']:<24} {r['params']:>12,} params  {r['images_per_s']:9.1f} "
              f"images/s +/- {r['spread']:.1f}  {r['pct_of_peak']:5.1f}% of peak")
    if not args.no_ceiling and "mae" in impls:
        c = ceiling(Stepper("mae", config, batch, device, prec), name, prec or torch.float32,
                    1 if args.smoke else 3, 1 if args.smoke else 5, probe)
        step = next(r for r in rows if r["impl"] == "mae")
        # step time / the time of its own matmuls (the same FLOPs within 1 %, tests/test_bench.py)
        c.update(precision=tag, overhead=c["achieved_gflops"] / step["achieved_gflops"])
        print(f"  matmul ceiling: {c['achieved_gflops']:.1f} GFLOP/s = "
              f"{c['pct_of_peak']:.1f}% of peak ({c['calls']} products, {c['products']} shapes); "
              f"step / its matmuls = {c['overhead']:.2f}")
        rows.append(c)
    return rows


def default_steps(rows: list[dict], shapes: list[str], device: torch.device) -> None:
    """Marks, per shape, the rows a user gets without flags: mae with precision auto (the dtype
    `mae.runtime.autocast_dtype` picks for the shape's encoder width), the peers in float32."""
    for name in shapes:
        mae_default = precision_name(autocast_dtype("auto", device,
                                                    shape_config(name, False).encoder_dim))
        for r in rows:
            if r["section"] == "train_step" and r["shape"] == name and "compile" not in r["impl"]:
                r["library_default"] = r["precision"] == (
                    mae_default if r["impl"].startswith("mae") else "fp32")


if __name__ == "__main__":
    sys.exit(main())
