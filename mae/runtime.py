"""Where and how code runs: the device (chosen once, here), precision policy, distributed setup,
and the seeds that make every random draw a function of (seed, step) alone."""

from __future__ import annotations

import contextlib
import os
import random
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

# Independent random streams derived from one seed.
(STREAM_INIT, STREAM_ORDER, STREAM_AUG, STREAM_PROBE, STREAM_FT, STREAM_CROP,
 STREAM_SUBSET) = range(7)


def seed_for(seed: int, index: int, stream: int) -> int:
    """A 63-bit seed for draw ``index`` of ``stream``: the same on every rank and every resume."""
    return (seed * 1_000_003 + index * 16 + stream) % (2**63 - 1)


def generator(seed: int, index: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed_for(seed, index, stream))


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: this rank's GPU if there is one, else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    from .config import ConfigError

    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N.") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {name!r} is not supported: use auto, cpu, cuda or cuda:N.")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but CUDA is not available here: use "
                          f"device=auto or cpu.")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r} asked for, but this machine has "
                          f"{torch.cuda.device_count()} GPU(s): use cuda:0 to "
                          f"cuda:{torch.cuda.device_count() - 1}.")
    return device


# The narrowest encoder for which `precision="auto"` picks bf16 autocast on a CPU that multiplies
# bf16 natively. benchmarks/bf16.py (results/benchmarks/cpu-2threads-bf16.md: AMD EPYC with
# avx512_bf16, 2 threads, batch 256, 64 patches) measured bf16 / float32 train-step speed with
# attention as two plain products in bf16 (`mae.layers.attend`): 1.91x at width 128 (micro), 1.81x
# at 160, 1.83x at 192 and 256. With torch's fused bf16 attention it had been 0.75x at 128 and
# 1.19x at 192, hence 192. bf16 now pays at micro too, and the quality check rerun with this
# attention path passed (tier cpu-bf16 against cpu: +0.1 / +0.3 probe / kNN points, within the
# spread). `auto` stays float32 below 192 until the micro runs that record precision "auto" (the
# cpu tier, chapters 6 and 7) are pinned to the float32 they ran and the stale check compares the
# precision a run resolved: lowering it now would change their results on such CPUs unnoticed.
CPU_BF16_MIN_WIDTH = 192
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16() -> bool:
    """True where the CPU multiplies bf16 in hardware (x86 flags avx512_bf16 or amx_bf16, read
    from /proc/cpuinfo); False elsewhere, where torch emulates bf16 matmuls many times slower
    than float32. ``MAE_CPU_BF16=0`` or ``1`` overrides the detection."""
    forced = os.environ.get("MAE_CPU_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f
                          if line.startswith("flags")), [])
    except OSError:
        return False
    return any(flag in flags for flag in _CPU_BF16_FLAGS)


def autocast_dtype(precision: str, device: torch.device,
                   width: int | None = None) -> torch.dtype | None:
    """The autocast dtype, or None for float32.

    ``auto``: bf16 on a CUDA GPU that supports it; on a CPU, bf16 only where it is native
    (`cpu_has_native_bf16`) and the encoder is at least `CPU_BF16_MIN_WIDTH` wide (``width``,
    the model's encoder_dim; where bf16 pays), else float32. ``fp32``, ``bf16``, ``fp16``:
    as named, on any device."""
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        if device.type == "cpu" and (width or 0) >= CPU_BF16_MIN_WIDTH and cpu_has_native_bf16():
            return torch.bfloat16
        return None
    if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        global _warned_emulated_bf16
        if not _warned_emulated_bf16:  # once a process: correct, but a run could take days
            _warned_emulated_bf16 = True
            print("warning: bf16 on a CPU without native bf16 (no avx512_bf16 or amx_bf16 flag): "
                  "torch emulates it, many times slower than float32; use --precision fp32 (or "
                  "auto) on this machine", file=sys.stderr)
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


_warned_emulated_bf16 = False


def precision_name(dtype: torch.dtype | None) -> str:
    """What a run records: ``fp32``, ``bf16`` or ``fp16``."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def fused_adamw(device: torch.device) -> bool | None:
    """AdamW's fused kernel (one pass over all parameters) where torch has one, CPU and CUDA;
    None leaves the choice to torch elsewhere."""
    return True if device.type in ("cpu", "cuda") else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str = "auto") -> tuple[Dist, torch.device]:
    """Join the process group when launched by torchrun (NCCL on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    device = pick_device(device_name)
    if world == 1:
        return Dist(), device
    info = Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", 0)))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend)
    return info, device


def all_mean(value: torch.Tensor, info: Dist) -> torch.Tensor:
    """Mean of a tensor over ranks (identity in one process)."""
    if info.world > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= info.world
    return value


def rng_state() -> dict[str, Any]:
    """Every global random state a training step touches (torch, Python, NumPy, CUDA), as
    tensors and plain values that a weights_only checkpoint can hold."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
             "numpy": [torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                       float(gauss)]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what `rng_state` saved."""
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
