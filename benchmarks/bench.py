"""Speed of `mae` against the implementations people would pick instead, measured in one run.

    python benchmarks/bench.py                 # everything, on the best device (make bench)
    python benchmarks/bench.py --smoke         # seconds: checks that every section runs
    python benchmarks/bench.py --device cuda --configs vit-b --compile both   # see gpu.sh

Sections, all in this one process (peak memory on CPU comes from short child processes):

1. matmul peak: the best median rate of large square matmuls (float32 on CPU, bf16 on CUDA).
2. train step (forward + backward + AdamW step) in images/s for `mae`, for transformers'
   ``ViTMAEForPreTraining`` (its default SDPA attention) and for vit-pytorch's ``MAE``, built
   at the same widths, depths, heads, patch size, mask ratio and decoder. vit-pytorch's MAE has
   no CLS token, so `mae` also runs at that architecture (``mae no-CLS``, ``cls_token=False``)
   and is compared with vit-pytorch as such; ``mae`` (with the paper's CLS token) is compared
   with transformers, which has one. The implementations are interleaved step by step (in an
   order that rotates from round to round) so that machine noise hits all of them alike;
   warm-up, then the median of repeated steps, with the spread (half the interquartile range)
   beside it.
3. achieved FLOP rate of our step (analytic FLOPs from ``mae.flops``) against section 1.
4. encoder on visible patches only vs with mask tokens, at a ViT-L shape with depths / 4.
5. data pipeline (gather + batched crop / flip / resize + masks) against the train steps.
6. peak memory per configuration and implementation.

Writes ``results/benchmarks/<device>.csv`` and ``.md`` (machine, versions, date) and prints the
ratios (ours / peer) last. Peers that are not installed are skipped with a note
(``pip install -e ".[dev]"`` installs both).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import torch

from mae import MAE, MAEConfig
from mae.convert import transformers_config_kwargs
from mae.flops import mae_flops
from mae.masking import sample_noise
from mae.provenance import device_name, git_state, versions, write_text_atomic
from mae.runtime import autocast, autocast_dtype, fused_adamw, pick_device

ROOT = Path(__file__).resolve().parents[1]
IMPLS = ("mae", "transformers", "vit-pytorch")
# vit-pytorch's MAE has no CLS token (its encoder never prepends one): `mae` is compared with it
# at that architecture too, built with cls_token=False, so the ratio compares equal work.
NO_CLS = "mae no-CLS"
ARCH = {"mae": {}, "transformers": {}, "vit-pytorch": {"cls_token": False},
        NO_CLS: {"cls_token": False}}  # the architecture each builds, as MAEConfig changes
MATCHED = {"transformers": "mae", "vit-pytorch": NO_CLS}  # peer -> mae at its architecture


@dataclass(frozen=True)
class Shape:
    """One benchmarked architecture and its batch size (per device type)."""

    name: str
    preset: str
    overrides: dict = field(default_factory=dict)
    batch_cpu: int = 64
    batch_cuda: int = 256
    note: str = ""

    def config(self, **extra) -> MAEConfig:
        return MAEConfig.preset(self.preset, **{**self.overrides, **extra})

    def batch(self, device: torch.device, smoke: bool = False) -> int:
        """The batch size on this device type (2 in smoke mode)."""
        return 2 if smoke else self.batch_cuda if device.type == "cuda" else self.batch_cpu


SHAPES = {
    "micro": Shape("micro", "micro", batch_cpu=256, batch_cuda=1024,
                   note="CIFAR 32 px, patch 4, enc 128x6, dec 64x2"),
    "tiny": Shape("tiny", "tiny", batch_cpu=64, batch_cuda=512,
                  note="CIFAR 32 px, patch 2, enc 192x12, dec 128x4"),
    "vit-b-d4": Shape("vit-b-d4", "base", dict(encoder_layers=4, decoder_layers=2), batch_cpu=8,
                      batch_cuda=256, note="224 px, patch 16, enc 768x4, dec 512x2 (ViT-B, depth / 3)"),
    "vit-b": Shape("vit-b", "base", batch_cpu=4, batch_cuda=256,
                   note="224 px, patch 16, enc 768x12, dec 512x8 (the paper's ViT-B)"),
}
# The paper's speed claim (Table 2: 3.3x fewer FLOPs, 2.8x faster for ViT-L) at depths / 4, so the
# decoder keeps its share of the FLOPs per token.
VITL = Shape("vit-l-d4", "large", dict(encoder_layers=6, decoder_layers=2), batch_cpu=16,
             batch_cuda=128, note="224 px, patch 16, enc 1024x6, dec 512x2 (ViT-L, depths / 4)")
SMOKE = dict(img_size=32, patch_size=8, encoder_dim=64, encoder_layers=1, encoder_heads=2,
             decoder_dim=32, decoder_layers=1, decoder_heads=2)


# ----------------------------------------------------------------------------- the three models
def build(impl: str, config: MAEConfig, device: torch.device,
          return_pred: bool = False) -> tuple[torch.nn.Module, Callable]:
    """The model and a ``loss(images, noise)`` function, as that implementation's users call it
    (``return_pred`` is mae's option; mae.train leaves it False)."""
    torch.manual_seed(0)
    if impl in ("mae", NO_CLS):
        model = MAE(config.replace(**ARCH[impl])).to(device)
        # As mae.train calls it: no pixel predictions for visible patches, which the loss ignores.
        return model, lambda x, noise: model(x, noise=noise, return_pred=return_pred).loss
    if impl == "transformers":
        from transformers import ViTMAEConfig, ViTMAEForPreTraining

        model = ViTMAEForPreTraining(ViTMAEConfig(**transformers_config_kwargs(config))).to(device)
        return model, lambda x, noise: model(pixel_values=x, noise=noise).loss
    if impl == "vit-pytorch":
        from vit_pytorch import ViT
        from vit_pytorch.mae import MAE as VPMAE

        c = config
        # pool="mean" (no CLS token): vit-pytorch's MAE indexes the positional table wrongly
        # when the encoder has one; the masking draws its own noise (torch.rand + argsort).
        encoder = ViT(image_size=c.img_size, patch_size=c.patch_size, num_classes=0,
                      dim=c.encoder_dim, depth=c.encoder_layers, heads=c.encoder_heads,
                      mlp_dim=c.encoder_mlp_dim, dim_head=c.encoder_dim // c.encoder_heads,
                      channels=c.in_chans, pool="mean")
        model = VPMAE(encoder=encoder, decoder_dim=c.decoder_dim, masking_ratio=c.mask_ratio,
                      decoder_depth=c.decoder_layers, decoder_heads=c.decoder_heads,
                      decoder_dim_head=c.decoder_dim // c.decoder_heads).to(device)
        return model, lambda x, noise: model(x)
    raise ValueError(f"unknown implementation {impl!r}; choose from {IMPLS}")


def available(impl: str) -> str | None:
    """None when the implementation can be imported, else why not."""
    module = {"mae": "mae", NO_CLS: "mae", "transformers": "transformers",
              "vit-pytorch": "vit_pytorch"}[impl]
    try:
        __import__(module)
    except ImportError as err:
        return f"{impl} is not installed ({err}); pip install -e '.[dev]' installs it"
    return None


class Stepper:
    """One implementation at one shape: a fixed batch, AdamW, and a timed train step."""

    def __init__(self, impl: str, config: MAEConfig, batch: int, device: torch.device,
                 amp: torch.dtype | None, compile_model: bool = False,
                 fused_optimizer: bool = True, return_pred: bool = False) -> None:
        self.impl, self.device, self.amp = impl, device, amp
        self.model, loss_fn = build(impl, config, device, return_pred)
        self.params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        if compile_model:
            loss_fn = torch.compile(loss_fn)
        self.loss_fn = loss_fn
        # The same optimizer for everyone: AdamW, the paper's betas and weight decay, torch's
        # fused kernel (transformers' Trainer default; mae.train uses it too).
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1.5e-4, betas=(0.9, 0.95),
                                     weight_decay=0.05,
                                     fused=fused_adamw(device) if fused_optimizer else False)
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(batch, config.in_chans, config.img_size, config.img_size,
                             generator=g).to(device)
        self.noise = sample_noise("random", batch, config.grid_size, config.mask_ratio,
                                  generator=g).to(device)
        self.batch = batch

    def step(self) -> float:
        """One train step; returns its wall time in seconds."""
        sync(self.device)
        t = time.perf_counter()
        with autocast(self.device, self.amp):
            loss = self.loss_fn(self.x, self.noise)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        sync(self.device)
        return time.perf_counter() - t


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- measurements
def median_spread(values: list[float]) -> tuple[float, float]:
    """The median and half the interquartile range (half the range below four values)."""
    values = sorted(values)
    if len(values) >= 4:
        q1, _, q3 = statistics.quantiles(values, n=4)
        return statistics.median(values), (q3 - q1) / 2
    return statistics.median(values), (values[-1] - values[0]) / 2


def paired_ratio(ours: list[float], other: list[float]) -> tuple[float, float]:
    """Speed of ours over other from step times taken in the same rounds: median and half IQR
    of the per-round ratios (other's time / ours)."""
    return median_spread([t_other / t_ours for t_ours, t_other in zip(ours, other, strict=True)])


def summary(times: list[float], batch: int) -> tuple[float, float]:
    """Median images/s and its spread: half the interquartile range of the per-step rates."""
    return median_spread([batch / t for t in times])


def matmul_peak(device: torch.device, dtype: torch.dtype, sizes: list[int], repeats: int) -> dict:
    """Best median rate over square matmuls of the given sizes, in GFLOP/s."""
    best = {"gflops": 0.0}
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        a @ b
        times = []
        for _ in range(repeats):
            sync(device)
            t = time.perf_counter()
            a @ b
            sync(device)
            times.append(time.perf_counter() - t)
        rate = 2 * n**3 / statistics.median(times) / 1e9
        if rate > best["gflops"]:
            best = {"gflops": rate, "size": n}
    return best


class PeakProbe:
    """One square matmul of the peak's size, timed between rounds of train steps, so that the
    achieved rate of each shape is compared with the peak of the same minutes (CPU clocks and
    neighbours on shared machines drift over a run)."""

    def __init__(self, device: torch.device, dtype: torch.dtype, size: int) -> None:
        self.device, self.size = device, size
        self.a = torch.randn(size, size, device=device, dtype=dtype)
        self.b = torch.randn(size, size, device=device, dtype=dtype)
        self.rates: list[float] = []

    def __call__(self) -> None:
        sync(self.device)
        t = time.perf_counter()
        self.a @ self.b
        sync(self.device)
        self.rates.append(2 * self.size**3 / (time.perf_counter() - t) / 1e9)

    def take(self) -> float:
        """Median GFLOP/s of the probes since the last call."""
        rates, self.rates = self.rates, []
        return statistics.median(rates)


def rotated(names: list[str], r: int) -> list[str]:
    """The order of round r: names rotated by r, so that none always goes first."""
    return names[r % len(names):] + names[:r % len(names)]


def interleave(steppers: dict[str, Stepper], warmup: int, repeats: int,
               probe: PeakProbe | None) -> tuple[dict[str, list[float]], float | None]:
    """Warm-up, then rounds of one step of each stepper in turn and one peak probe; returns the
    step times per stepper and the median matmul rate of those rounds (None without a probe).
    The order rotates from round to round, so that no implementation always runs first (after
    the probe) or right after the same peer."""
    times: dict[str, list[float]] = {name: [] for name in steppers}
    names = list(steppers)
    for _ in range(warmup):
        for s in steppers.values():
            s.step()
    for r in range(repeats):
        for name in rotated(names, r):
            times[name].append(steppers[name].step())
        if probe:
            probe()
    return times, probe.take() if probe else None


def compare(shape: Shape, config: MAEConfig, impls: list[str], batch: int, device, amp,
            warmup: int, repeats: int, compile_modes: list[bool], probe: PeakProbe) -> list[dict]:
    """Interleaved train steps of every implementation (and compile mode) at one shape; with
    vit-pytorch, also `mae` at vit-pytorch's architecture (``NO_CLS``)."""
    if "mae" in impls and "vit-pytorch" in impls:
        impls = [*impls[:impls.index("mae") + 1], NO_CLS, *impls[impls.index("mae") + 1:]]
    steppers = {}
    for impl in impls:
        for comp in compile_modes:
            name = impl + (" +compile" if comp else "")
            steppers[name] = Stepper(impl, config, batch, device, amp, comp)
    times, peak = interleave(steppers, warmup, repeats, probe)
    rows = []
    for name, s in steppers.items():
        # FLOPs of the architecture this implementation builds, counted as mae runs it.
        flops = mae_flops(config.replace(**ARCH[s.impl]))["train_step"]
        rate, spread = summary(times[name], batch)
        rows.append(dict(section="train_step", shape=shape.name, impl=name, batch=batch,
                         params=s.params, images_per_s=rate, spread=spread,
                         step_gflop_per_image=flops / 1e9, achieved_gflops=rate * flops / 1e9,
                         peak_gflops=peak, pct_of_peak=100 * rate * flops / 1e9 / peak,
                         step_times=times[name]))
    del steppers
    return rows


def mask_token_speedup(shape: Shape, batch: int, device, amp, warmup: int, repeats: int,
                       smoke: bool, probe: PeakProbe) -> list[dict]:
    """Our step with the encoder on visible patches only vs on all patches plus mask tokens."""
    rows = []
    steppers, configs = {}, {}
    for variant, flag in (("visible-only", False), ("mask tokens", True)):
        config = shape.config(encoder_mask_tokens=flag, **(SMOKE if smoke else {}))
        configs[variant] = config
        steppers[variant] = Stepper("mae", config, batch, device, amp)
    times, peak = interleave(steppers, warmup, repeats, probe)
    for v, s in steppers.items():
        rate, spread = summary(times[v], batch)
        f = mae_flops(configs[v])
        rows.append(dict(section="encoder_variant", shape=shape.name, impl=f"mae {v}", batch=batch,
                         params=s.params, images_per_s=rate, spread=spread,
                         step_gflop_per_image=f["train_step"] / 1e9,
                         encoder_gflop_per_image=f["encoder"] / 1e9,
                         achieved_gflops=rate * f["train_step"] / 1e9, peak_gflops=peak,
                         pct_of_peak=100 * rate * f["train_step"] / 1e9 / peak))
    return rows


def pipeline_rate(config: MAEConfig, batch: int, repeats: int, device) -> dict | None:
    """The training data pipeline on CIFAR-10 (what mae.train runs per step), images/s."""
    from mae.config import TrainConfig
    from mae.data import DataError, load_dataset
    from mae.runtime import Dist
    from mae.train import draw_batch, epoch_order

    try:
        data = load_dataset("cifar10", "train")
    except DataError as err:
        print(f"data pipeline: skipped, CIFAR-10 not found ({str(err).splitlines()[0]})")
        return None
    data.to(device)
    tc = TrainConfig(dataset="cifar10", batch_size=batch)
    order = epoch_order(len(data), 0, 0)
    times = []
    for i in range(repeats + 1):
        start = (i * batch) % (len(data) - batch)
        sync(device)
        t = time.perf_counter()
        draw_batch(data, order, start, batch, config.img_size, config, tc, i, Dist())
        sync(device)
        times.append(time.perf_counter() - t)
    rate, spread = summary(times[1:], batch)
    return dict(section="data_pipeline", shape=f"cifar10 -> {config.img_size} px", impl="mae.train",
                batch=batch, images_per_s=rate, spread=spread)


def memory_probe(impl: str, shape: str, batch: int, smoke: bool, threads: int,
                 mask_tokens: bool = False) -> float | None:
    """Peak resident memory (MiB) that two train steps add to a fresh child process (CPU):
    activations, gradients and optimizer state, beyond the model and the batch."""
    cmd = [sys.executable, __file__, "--_memory", impl, shape, str(batch), "--threads", str(threads)]
    cmd += ["--smoke"] if smoke else []
    cmd += ["--_mask-tokens"] if mask_tokens else []
    out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
    if out.returncode:
        print(f"memory probe {impl} {shape} failed:\n{out.stderr[-800:]}", file=sys.stderr)
        return None
    return float(out.stdout.strip().splitlines()[-1])


def _memory_child(impl: str, shape_name: str, batch: int, smoke: bool, mask_tokens: bool) -> None:
    config = shape_config(shape_name, smoke, encoder_mask_tokens=mask_tokens)
    s = Stepper(impl, config, batch, torch.device("cpu"), None)
    base = _proc_status("VmRSS")
    # Reset the high-water mark (VmHWM) to the current RSS (Linux >= 4.0). getrusage's
    # ru_maxrss would not do: it survives exec, so a child starts with its parent's peak.
    Path("/proc/self/clear_refs").write_text("5")
    for _ in range(2):
        s.step()
    print(f"{_proc_status('VmHWM') - base:.1f}")


def _proc_status(key: str) -> float:
    """A memory field of /proc/self/status, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"{key} not in /proc/self/status (peak memory needs Linux)")


def shape_config(name: str, smoke: bool, **extra) -> MAEConfig:
    shape = VITL if name == VITL.name else SHAPES[name]
    return shape.config(**{**(SMOKE if smoke else {}), **extra})


# ----------------------------------------------------------------------------- report
def device_slug(device: torch.device) -> str:
    if device.type == "cuda":
        return "cuda-" + re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")
    return f"cpu-{torch.get_num_threads()}threads"


COLUMNS = ["section", "shape", "impl", "batch", "params", "images_per_s", "spread",
           "step_gflop_per_image", "encoder_gflop_per_image", "achieved_gflops", "peak_gflops",
           "pct_of_peak",
           "peak_mem_mib"]


def fmt(value, digits: int = 1) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def write_report(rows: list[dict], ratios: list[str], header: dict, out_dir: Path, slug: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})
    write_text_atomic(out_dir / f"{slug}.csv", buf.getvalue())

    lines = [f"# Benchmarks: {header['machine']}", ""]
    lines += [f"- {k}: {v}" for k, v in header.items() if k != "machine"]
    lines += [""] + """\
Images/s are medians of repeated steps (implementations interleaved, one step of
each per round, the order rotating from round to round); +/- is half the
interquartile range. A ratio below is the median of the per-round ratios of step
times, +/- half their interquartile range. vit-pytorch's MAE has no CLS token: it is
compared with `mae no-CLS`, mae built the same way (`cls_token=False`); transformers
with `mae`. GFLOP/image are analytic, for the architecture the row builds (`mae.flops`:
a step = 3 forward passes, counted as mae's training step runs them: the decoder's last
block and pixel head on hidden patches only, its first block's mask-token projection
once per batch); % of peak compares the achieved rate with the median rate of a matmul
of the peak's size timed between the rounds of the same steps. Peak MiB: on CPU, the resident memory
that two train steps add in a fresh process beyond the model and the batch
(activations, gradients, optimizer state); on CUDA, the caching allocator's peak.
""".splitlines() + [""]
    md_cols = ["section", "shape", "impl", "batch", "trainable params", "images/s", "+/-",
               "GFLOP/image", "GFLOP/s", "matmul GFLOP/s", "% of peak", "peak MiB"]
    lines.append("| " + " | ".join(md_cols) + " |")
    lines.append("|" + "---|" * len(md_cols))
    for r in rows:
        cells = [r["section"], r.get("shape", ""), r.get("impl", ""), fmt(r.get("batch")),
                 fmt(r.get("params")), fmt(r.get("images_per_s")), fmt(r.get("spread")),
                 fmt(r.get("step_gflop_per_image"), 3), fmt(r.get("achieved_gflops")),
                 fmt(r.get("peak_gflops"), 0), fmt(r.get("pct_of_peak")), fmt(r.get("peak_mem_mib"), 0)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Ratios", ""] + [f"- {r}" for r in ratios] + [""]
    md = out_dir / f"{slug}.md"
    write_text_atomic(md, "\n".join(lines))
    return md


def ratio_line(ours: dict, peer: dict, note: str | None = None) -> tuple[str, bool]:
    """ours / peer in images/s and whether it is above 1 by more than its spread; True if so.
    With a ``note`` the line is for information: the note replaces the verdict.

    The steps were interleaved, so round i holds one step of each: the ratio is the median of
    the per-round ratios (a slow drift of the machine's speed cancels within a round) and its
    spread the half interquartile range of those ratios. Without per-round times (rows read
    back from a file) it falls back to the ratio of medians with both spreads added.
    """
    a, b = ours.get("step_times"), peer.get("step_times")
    if a and b and len(a) == len(b):
        r, spread = paired_ratio(a, b)
        how = "paired per round"
    else:
        r = ours["images_per_s"] / peer["images_per_s"]
        spread = r * (ours["spread"] / ours["images_per_s"] + peer["spread"] / peer["images_per_s"])
        how = "both spreads added"
    ahead = r - 1 > spread
    verdict = f" ({note})" if note else "" if ahead else "  <- not ahead by more than the spread"
    return (f"{ours['shape']}: {ours['impl']} / {peer['impl']} = {r:.2f}x (+/- {spread:.2f}, "
            f"{how}){verdict}"), ahead


# ----------------------------------------------------------------------------- main
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
    p.add_argument("--compile", choices=["off", "on", "both"], default="off",
                   help="torch.compile the step's forward (both: measure with and without)")
    p.add_argument("--no-speedup", action="store_true", help="skip the ViT-L mask-token section")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory section")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "benchmarks",
                   help="folder for <device>.csv and .md (default: %(default)s)")
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
        _memory_child(impl, shape, int(batch), args.smoke, args._mask_tokens)
        return 0

    device = pick_device(args.device)
    amp = autocast_dtype("auto", device)  # bf16 on CUDA, float32 on CPU (see mae.runtime)
    peak_dtype = amp or torch.float32
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
    v = versions()
    header = {
        "machine": device_name(str(device)),
        "device": str(device),
        "precision": "bf16 autocast" if amp == torch.bfloat16 else str(peak_dtype).replace("torch.", ""),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "versions": ", ".join(f"{k} {v[k]}" for k in ("python", "torch", "mae") if k in v)
        + "".join(f", {m} {metadata.version(m)}" for m in ("transformers", "vit-pytorch")
                  if m in impls),
        "git commit": "{git_commit}{dirty}".format(
            **git_state(), dirty=" (uncommitted changes)" if git_state()["git_dirty"] else ""),
        "command": "python benchmarks/bench.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    print(f"{header['machine']} | {header['precision']} | torch {torch.__version__}")

    sizes = [256] if args.smoke else ([4096, 8192] if device.type == "cuda" else [1024, 2048])
    peak = matmul_peak(device, peak_dtype, sizes, 2 if args.smoke else 10)
    header["matmul peak"] = f"{peak['gflops']:,.0f} GFLOP/s ({peak_dtype}, {peak['size']}^3)"
    print(f"matmul peak: {header['matmul peak']}")
    rows: list[dict] = [dict(section="matmul_peak", shape=f"{peak['size']}^3", impl=str(peak_dtype),
                             achieved_gflops=peak["gflops"], pct_of_peak=100.0)]
    probe = PeakProbe(device, peak_dtype, peak["size"])

    for name in shapes:
        shape = SHAPES[name]
        config = shape_config(name, args.smoke)
        batch = args.batch or shape.batch(device, args.smoke)
        print(f"train step, {name} ({shape.note}), batch {batch} ...", flush=True)
        got = compare(shape, config, impls, batch, device, amp, warmup, repeats, compile_modes,
                      probe)
        for r in got:
            print(f"  {r['impl']:<24} {r['params']:>12,} params  {r['images_per_s']:9.1f} "
                  f"images/s +/- {r['spread']:.1f}  {r['pct_of_peak']:5.1f}% of peak")
        rows += got

    if not args.no_speedup:
        batch = args.batch or VITL.batch(device, args.smoke)
        print(f"encoder variants, {VITL.name} ({VITL.note}), batch {batch} ...", flush=True)
        # Steps of many seconds on CPU: fewer repeats, which the spread column shows.
        got = mask_token_speedup(VITL, batch, device, amp, min(warmup, 1), min(repeats, 5),
                                 args.smoke, probe)
        for r in got:
            print(f"  {r['impl']:<24} {r['images_per_s']:9.2f} images/s +/- {r['spread']:.2f}")
        rows += got

    probe_cfg = shape_config("tiny" if "tiny" in shapes else shapes[0], args.smoke)
    pipe = pipeline_rate(probe_cfg, 256 if not args.smoke else 8, 3 if args.smoke else 15, device)
    if pipe:
        print(f"data pipeline: {pipe['images_per_s']:,.0f} images/s +/- {pipe['spread']:,.0f}")
        rows.append(pipe)

    if not args.no_memory:
        print("peak memory ...", flush=True)
        for r in rows:
            if r["section"] not in ("train_step", "encoder_variant") or "compile" in r["impl"]:
                continue
            if args.smoke and r is not rows[1]:
                continue  # one child process is enough to check that the probe works
            impl = "mae" if r["section"] == "encoder_variant" else r["impl"]
            tokens = r["impl"] == "mae mask tokens"
            if device.type == "cuda":  # the caching allocator's own peak, in this process
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
                s = Stepper(impl, shape_config(r["shape"], args.smoke, encoder_mask_tokens=tokens),
                            r["batch"], device, amp)
                s.step()
                r["peak_mem_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
                del s
            else:
                r["peak_mem_mib"] = memory_probe(impl, r["shape"], r["batch"], args.smoke,
                                                 torch.get_num_threads(), tokens)

    ratios, ahead_all = [], True
    by = {(r["section"], r["shape"], r["impl"]): r for r in rows}
    for name in shapes:
        for comp in compile_modes:
            suffix = " +compile" if comp else ""
            for peer in [i for i in impls if i != "mae"] if "mae" in impls else []:
                ours = by.get(("train_step", name, MATCHED[peer] + suffix))
                other = by.get(("train_step", name, peer + suffix))
                if ours and other:
                    line, ahead = ratio_line(ours, other)
                    ratios.append(line)
                    ahead_all &= ahead
            ours = by.get(("train_step", name, "mae" + suffix))
            other = by.get(("train_step", name, "vit-pytorch" + suffix))
            if ours and other:  # for information: not the same architecture
                ratios.append(ratio_line(ours, other, "mae with its CLS token: one more token per "
                                         "sequence than vit-pytorch; not counted")[0])
    for name in shapes:
        r = by.get(("train_step", name, "mae"))
        if r:
            ratios.append(f"{name}: achieved {r['achieved_gflops']:.1f} GFLOP/s = "
                          f"{r['pct_of_peak']:.1f}% of the matmul rate measured between its steps "
                          f"({r['peak_gflops']:.0f} GFLOP/s)")
    vis, tok = by.get(("encoder_variant", VITL.name, "mae visible-only")), \
        by.get(("encoder_variant", VITL.name, "mae mask tokens"))
    if vis and tok:
        ratios.append(f"{VITL.name}: visible-only / mask-token encoder step = "
                      f"{vis['images_per_s'] / tok['images_per_s']:.2f}x wall clock; analytic "
                      f"FLOPs ratio {tok['step_gflop_per_image'] / vis['step_gflop_per_image']:.2f}x "
                      f"(step), {tok['encoder_gflop_per_image'] / vis['encoder_gflop_per_image']:.2f}x "
                      f"(encoder)")
    if pipe:
        for name in shapes:
            r = by.get(("train_step", name, "mae"))
            if r:
                ratios.append(f"data pipeline / {name} train step = "
                              f"{pipe['images_per_s'] / r['images_per_s']:.0f}x")
    if len(impls) > 1:
        ratios.append("mae ahead of every peer by more than the spread: "
                      + ("yes" if ahead_all else "NO"))
    header["wall time"] = f"{time.time() - started:.0f} s"
    slug = device_slug(device) + ("-smoke" if args.smoke else "")
    md = write_report(rows, ratios, header, args.out, slug)
    print(f"wrote {md} and {md.with_suffix('.csv')}")
    print("\n".join(["", "ratios (ours / peer):"] + ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
