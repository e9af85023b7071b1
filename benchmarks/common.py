"""What every benchmark shares: the shapes, the models as their users call them, a timed train
step (`Stepper`), interleaved rounds of steps, and the statistics of their times."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mae import MAE, MAEConfig
from mae.convert import transformers_config_kwargs
from mae.hidden import hidden_patch_loss
from mae.masking import sample_noise
from mae.runtime import autocast, fused_adamw

if TYPE_CHECKING:
    from probes import PeakProbe

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


def shape_config(name: str, smoke: bool, **extra) -> MAEConfig:
    shape = VITL if name == VITL.name else SHAPES[name]
    return shape.config(**{**(SMOKE if smoke else {}), **extra})


# ----------------------------------------------------------------------------- the three models
def build(impl: str, config: MAEConfig, device: torch.device,
          shortcut: bool = True) -> tuple[torch.nn.Module, Callable]:
    """The model and a ``loss(images, noise)`` function, as that implementation's users call it.

    ``shortcut`` is mae's option: True (the default) is the loss as mae.train computes it,
    `mae.hidden.hidden_patch_loss` (no pixel predictions for the visible patches, which the loss
    ignores); False is the full forward, ``model(x, noise=noise).loss`` (every patch predicted).
    """
    torch.manual_seed(0)
    if impl in ("mae", NO_CLS):
        model = MAE(config.replace(**ARCH[impl])).to(device)
        if shortcut:
            return model, lambda x, noise: hidden_patch_loss(model, x, noise=noise)[0]
        return model, lambda x, noise: model(x, noise=noise).loss
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
                 fused_optimizer: bool = True, shortcut: bool = True) -> None:
        self.impl, self.device, self.amp = impl, device, amp
        self.model, loss_fn = build(impl, config, device, shortcut)
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


def median_seconds(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """The median wall time of ``fn()`` over ``repeats`` calls, after one untimed call."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


# ----------------------------------------------------------------------------- timing
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
