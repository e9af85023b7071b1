"""bench.py's measurements: the matmul peak, the train-step comparison, the mask-token encoder
variant, the data pipeline and peak memory. Each returns rows of the report (dicts)."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from common import (
    ARCH, NO_CLS, SMOKE, Shape, Stepper, interleave, median_seconds, shape_config, summary, sync,
)
from mae import MAEConfig
from mae.flops import mae_flops

BENCH = Path(__file__).resolve().with_name("bench.py")  # runs the memory probe's child process


# ----------------------------------------------------------------------------- matmul peak
def matmul_peak(device: torch.device, dtype: torch.dtype, sizes: list[int], repeats: int) -> dict:
    """Best median rate over square matmuls of the given sizes, in GFLOP/s."""
    best = {"gflops": 0.0}
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        rate = 2 * n**3 / median_seconds(lambda: a @ b, repeats, device) / 1e9
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


# ----------------------------------------------------------------------------- train steps
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


# ----------------------------------------------------------------------------- data pipeline
def pipeline_rate(config: MAEConfig, batch: int, repeats: int, device) -> dict | None:
    """The training data pipeline on CIFAR-10 (what mae.train runs per step), images/s."""
    from mae.recipe import TrainConfig
    from mae.data import DataError, load_dataset
    from mae.train import BatchSource, draw_batch, epoch_order

    try:
        data = load_dataset("cifar10", "train")
    except DataError as err:
        print(f"data pipeline: skipped, CIFAR-10 not found ({str(err).splitlines()[0]})")
        return None
    data.to(device)
    tc = TrainConfig(dataset="cifar10", batch_size=batch)
    order = epoch_order(len(data), 0, 0)
    source = BatchSource(data, config, tc)
    times = []
    for i in range(repeats + 1):
        start = (i * batch) % (len(data) - batch)
        sync(device)
        t = time.perf_counter()
        draw_batch(source, i, order, start)
        sync(device)
        times.append(time.perf_counter() - t)
    rate, spread = summary(times[1:], batch)
    return dict(section="data_pipeline", shape=f"cifar10 -> {config.img_size} px", impl="mae.train",
                batch=batch, images_per_s=rate, spread=spread)


# ----------------------------------------------------------------------------- peak memory
def peak_memory(rows: list[dict], device: torch.device, amp, smoke: bool) -> None:
    """Adds ``peak_mem_mib`` to the train-step and encoder-variant rows (not the compiled ones;
    in smoke mode the first train-step row only)."""
    for r in rows:
        if r["section"] not in ("train_step", "encoder_variant") or "compile" in r["impl"]:
            continue
        if smoke and r is not rows[1]:
            continue  # one child process is enough to check that the probe works
        impl = "mae" if r["section"] == "encoder_variant" else r["impl"]
        tokens = r["impl"] == "mae mask tokens"
        if device.type == "cuda":  # the caching allocator's own peak, in this process
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            s = Stepper(impl, shape_config(r["shape"], smoke, encoder_mask_tokens=tokens),
                        r["batch"], device, amp)
            s.step()
            r["peak_mem_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
            del s
        else:
            r["peak_mem_mib"] = memory_probe(impl, r["shape"], r["batch"], smoke,
                                             torch.get_num_threads(), tokens)


def memory_probe(impl: str, shape: str, batch: int, smoke: bool, threads: int,
                 mask_tokens: bool = False) -> float | None:
    """Peak resident memory (MiB) that two train steps add to a fresh child process (CPU):
    activations, gradients and optimizer state, beyond the model and the batch."""
    cmd = [sys.executable, str(BENCH), "--_memory", impl, shape, str(batch),
           "--threads", str(threads)]
    cmd += ["--smoke"] if smoke else []
    cmd += ["--_mask-tokens"] if mask_tokens else []
    out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
    if out.returncode:
        print(f"memory probe {impl} {shape} failed:\n{out.stderr[-800:]}", file=sys.stderr)
        return None
    return float(out.stdout.strip().splitlines()[-1])


def memory_child(impl: str, shape_name: str, batch: int, smoke: bool, mask_tokens: bool) -> None:
    """The child process of `memory_probe` (``bench.py --_memory``): prints the MiB."""
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
