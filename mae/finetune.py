"""End-to-end fine-tuning of a pre-trained encoder (the paper's appendix A.3), after the
reference's recipe: a ViT with global pooling and a learned positional embedding, AdamW with
layer-wise lr decay, drop path, label smoothing, mixup / cutmix and random erasing."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import ConfigError, MAEConfig
from .recipe import EvalConfig
from .augment import augment, crop_boxes, resize_batch
from .data import ImageDataset
from .encoder import Encoder
from .optim import layer_decay_groups, lr_at
from .runtime import STREAM_FT, autocast, fused_adamw, generator, precision_name, seed_for
from .model import init_model


# The official fine-tuning crop (timm's create_transform defaults): pre-training's is (0.2, 1).
FT_CROP_SCALE = (0.08, 1.0)


def _gpus(device: torch.device) -> list[torch.device]:
    """The devices whose random state `torch.random.fork_rng` must save: ``device`` if a GPU."""
    return [device] if device.type == "cuda" else []


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global generators (the CPU's, and ``device``'s on a GPU) for the block, and
    give the caller its own random state back afterwards: the block's draws (initialisation,
    drop path) depend on ``seed`` alone, and nothing around it sees a reseeding."""
    gpus = _gpus(device)
    with torch.random.fork_rng(devices=gpus):
        torch.default_generator.manual_seed(seed)
        for gpu in gpus:
            with torch.cuda.device(gpu):
                torch.cuda.manual_seed(seed)
        yield


class Classifier(nn.Module):
    """A ViT with global pooling for fine-tuning (appendix A.3; the reference's fine-tuning ViT):
    the pre-trained encoder's patch embedding, CLS token and blocks on all patches, the patch
    tokens averaged, a new LayerNorm ``fc_norm``, a linear head.

    The encoder's final ``norm`` is not applied: ``fc_norm`` after the pooling takes its place.
    It stays in the module so that the pre-training state dict loads into ``encoder`` as it is,
    and is frozen: its loaded weights are unused (so is a mask token, as no patch is hidden).
    The positional embedding ``pos_embed`` (1, T + L, D) is learned here, started from the
    encoder's fixed sin-cos table.
    """

    def __init__(self, config: MAEConfig, num_classes: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.encoder = Encoder(config, drop_path)
        table = self.encoder.pos_embed  # (1, 1 + L, D), its first row the CLS token's
        self.pos_embed = nn.Parameter(table.clone() if config.cls_token else table[:, 1:].clone())
        for unused in (self.encoder.norm, self.encoder.mask_token):
            if unused is not None:
                unused.requires_grad_(False)
        self.fc_norm = nn.LayerNorm(config.encoder_dim, eps=config.layer_norm_eps)
        self.head = nn.Linear(config.encoder_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=2e-5)  # as the reference fine-tuning code
        nn.init.zeros_(self.head.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, classes) logits."""
        enc, T = self.encoder, self.encoder.config.num_prefix
        enc.check_images(images)
        x = enc.patch_embed(images) + self.pos_embed[:, T:]  # (B, L, D)
        if enc.cls_token is not None:
            cls = (enc.cls_token + self.pos_embed[:, :1]).expand(len(x), -1, -1)  # (B, 1, D)
            x = torch.cat([cls, x], dim=1)  # (B, 1 + L, D)
        for block in enc.blocks:
            x = block(x)
        return self.head(self.fc_norm(x[:, T:].mean(1)))  # pool the patch tokens, not the CLS


def random_erase(x: torch.Tensor, p: float, g: torch.Generator, tries: int = 10,
                 area: tuple[float, float] = (0.02, 1 / 3),
                 ratio: tuple[float, float] = (0.3, 1 / 0.3)) -> torch.Tensor:
    """Random erasing (Zhong et al. 2020) as the reference fine-tuning uses it (timm's, mode
    'pixel', one box), batched: with probability p an image gets one rectangle of area fraction
    U(area) and log aspect ratio U(log ratio), the first of ``tries`` that fits (none: the image
    is kept), filled with N(0, 1) noise per pixel and channel: noise in the normalised space.

    x: (B, C, H, W) normalised images -> a new (B, C, H, W) tensor; p = 0 returns x itself.
    """
    if p <= 0:
        return x
    B, _, H, W = x.shape
    erase = torch.rand(B, generator=g) < p
    target = H * W * torch.empty(B, tries).uniform_(*area, generator=g)
    aspect = torch.exp(torch.empty(B, tries).uniform_(math.log(ratio[0]), math.log(ratio[1]),
                                                      generator=g))
    h = torch.sqrt(target * aspect).round()  # (B, tries)
    w = torch.sqrt(target / aspect).round()
    fits = (h < H) & (w < W)
    first = fits.float().argmax(1, keepdim=True)  # (B, 1) the first try that fits
    h, w = h.gather(1, first).squeeze(1), w.gather(1, first).squeeze(1)  # (B,)
    u = torch.rand(B, 2, generator=g)
    top, left = (u[:, 0] * (H - h + 1)).floor(), (u[:, 1] * (W - w + 1)).floor()
    rows, cols = torch.arange(H), torch.arange(W)
    box = (((rows >= top[:, None]) & (rows < (top + h)[:, None]))[:, :, None]
           & ((cols >= left[:, None]) & (cols < (left + w)[:, None]))[:, None, :])  # (B, H, W)
    box &= (erase & fits.any(1))[:, None, None]
    # The noise comes from a generator on x's device, seeded from g: cheap on a GPU even at
    # 224 px, and still a function of g alone.
    noise_g = torch.Generator(device=x.device).manual_seed(int(torch.randint(2**62, (1,),
                                                                             generator=g)))
    noise = torch.randn(x.shape, generator=noise_g, device=x.device, dtype=x.dtype)
    return torch.where(box[:, None].to(x.device), noise, x)


def mix_batch(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, ec: EvalConfig, g: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or cutmix (chosen half the time each when both are on) with label smoothing.
    Returns mixed images and soft targets (B, classes)."""
    smooth = ec.ft_label_smoothing
    target = F.one_hot(y, num_classes).float() * (1 - smooth) + smooth / num_classes
    use_cutmix = ec.ft_cutmix > 0 and (ec.ft_mixup == 0 or torch.rand(1, generator=g).item() < 0.5)
    alpha = ec.ft_cutmix if use_cutmix else ec.ft_mixup
    if alpha <= 0:
        return x, target
    lam = _beta(alpha, g)
    flipped = x.flip(0)
    if use_cutmix:
        H, W = x.shape[-2:]
        cut = math.sqrt(1 - lam)
        h, w = int(H * cut), int(W * cut)
        cy, cx = (torch.randint(0, n, (1,), generator=g).item() for n in (H, W))
        y0, y1 = max(cy - h // 2, 0), min(cy + h // 2, H)
        x0, x1 = max(cx - w // 2, 0), min(cx + w // 2, W)
        x = x.clone()
        x[:, :, y0:y1, x0:x1] = flipped[:, :, y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (H * W)
    else:
        x = lam * x + (1 - lam) * flipped
    return x, lam * target + (1 - lam) * target.flip(0)


def _beta(alpha: float, g: torch.Generator) -> float:
    """A Beta(alpha, alpha) draw, seeded from the torch generator."""
    seed = int(torch.randint(0, 2**62, (1,), generator=g))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def finetune(
    config: MAEConfig, train: ImageDataset, test: ImageDataset,
    encoder_state: Mapping[str, torch.Tensor] | None = None,
    eval_config: EvalConfig | Mapping[str, Any] | None = None,
    device: torch.device | str | None = None, progress: bool = True, curve_every: int = 0,
) -> dict[str, Any]:
    """Fine-tune the encoder end to end (from ``encoder_state``, or from random initialisation
    when None) and report test top-1. Torch's global random state is the caller's again
    afterwards. ``device``: where to run (default: the eval config's ``device``, auto = CUDA
    when present); autocast follows the eval config's ``precision`` (`mae.runtime.autocast_dtype`).

    ``curve_every`` > 0 also returns ``finetune_curve``: every that many steps and at the end,
    the mean training loss since the last point (on mixed, smoothed targets), and top-1 on the
    test set and on as many clean training images (the first, unaugmented, unmixed): how well
    the model fits what it trains on. The evaluations draw nothing random: the run is the same.

    As the official ``main_finetune.py`` (appendix A.3): AdamW (0.9, 0.999) with layer-wise lr
    decay, warm-up + cosine, lr = ft_base_lr * batch / 256, drop path, label smoothing, mixup /
    cutmix (switched half the time), random erasing; random-resized crops of area (0.08, 1) and
    aspect (3/4, 4/3), resized bicubic, and flips. Differences: no RandAugment (its
    rand-m9-mstd0.5-inc1 policy); test images are resized whole, not resized to 1/0.875 and
    centre-cropped; no EMA, no gradient clipping (the official default is none either)."""
    from .runtime import autocast_dtype, pick_device

    ec = EvalConfig.from_dict(eval_config or {})
    device = pick_device(ec.device) if device is None else torch.device(device)
    amp = autocast_dtype(ec.precision, device, config.encoder_dim)
    for data in (train, test):
        data.check_size(config.img_size, "fine-tuning")
    bs = ec.ft_batch_size
    if curve_every < 0:
        raise ConfigError(f"curve_every must be 0 (no curve) or a number of steps, got "
                          f"{curve_every}.")
    if len(train) < bs:
        raise ConfigError(f"fine-tuning needs at least ft_batch_size = {bs} training images for "
                          f"one step, got {len(train)}: lower ft_batch_size (e.g. to "
                          f"{max(1, len(train))}) or use more training images.")
    with _seeded(seed_for(ec.seed, 0, STREAM_FT), device):  # initialisation and drop path
        if encoder_state is None:  # the initialisation pre-training with the same seed starts
            with torch.random.fork_rng(devices=_gpus(device)):  # from; init_model reseeds
                encoder_state = init_model(config, ec.seed).encoder.state_dict()
        return _finetune(config, train, test, encoder_state, ec, device, amp, progress,
                         curve_every)


def _top1(model: Classifier, data: ImageDataset, device: torch.device,
          amp: torch.dtype | None) -> float:
    """Top-1 (%) of ``model`` on ``data``'s images resized whole, in eval mode (no drop path)."""
    model.eval()
    correct = 0
    size = model.encoder.config.img_size
    with torch.no_grad():
        for start in range(0, len(data), 512):
            x = resize_batch(data.images[start:start + 512].to(device), size, data.mean, data.std)
            with autocast(device, amp):
                pred = model(x).argmax(1)
            correct += (pred == data.labels[start:start + 512].to(device)).sum().item()
    return 100 * correct / len(data)


def _finetune(
    config: MAEConfig, train: ImageDataset, test: ImageDataset,
    encoder_state: Mapping[str, torch.Tensor], ec: EvalConfig, device: torch.device,
    amp: torch.dtype | None, progress: bool, curve_every: int = 0,
) -> dict[str, Any]:
    """`finetune`'s body, run with torch's global random state seeded for it."""
    model = Classifier(config, train.num_classes, ec.ft_drop_path)
    model.encoder.load_state_dict(encoder_state)
    model.to(device).train()
    groups = layer_decay_groups(model, ec.ft_weight_decay, ec.ft_layer_decay)
    bs = ec.ft_batch_size
    steps_per_epoch = len(train) // bs
    total = max(1, round(ec.ft_epochs * steps_per_epoch))
    warmup = round(ec.ft_warmup_epochs * steps_per_epoch)
    peak = ec.ft_base_lr * bs / 256
    opt = torch.optim.AdamW(groups, lr=peak, betas=(0.9, 0.999), fused=fused_adamw(device))
    images_all = train.images.to(device)
    labels_all = train.labels.to(device)
    from tqdm import tqdm  # plain: tqdm.auto warns in notebooks without ipywidgets

    t0 = time.perf_counter()
    losses = []
    curve: list[dict[str, float]] = []
    clean = train.subset(min(len(train), len(test)))  # for the curve's training top-1
    for step in tqdm(range(total), desc="finetune", unit="step", disable=not progress):
        epoch, within = divmod(step, steps_per_epoch)
        if within == 0:
            order = torch.randperm(len(train), generator=generator(ec.seed, epoch, STREAM_FT))
        g = generator(ec.seed, 1_000_000 + step, STREAM_FT)
        idx = order[within * bs:(within + 1) * bs].to(device)
        boxes = crop_boxes(bs, train.img_size, train.img_size, g, scale=FT_CROP_SCALE)
        flips = torch.rand(bs, generator=g) < 0.5
        x = augment(images_all[idx], config.img_size, boxes, flips, train.mean, train.std,
                    mode="bicubic")
        x = random_erase(x, ec.ft_reprob, g)  # after normalisation, before mixing
        x, target = mix_batch(x, labels_all[idx], train.num_classes, ec, g)
        lr = lr_at(step, total, warmup, peak)
        for group in opt.param_groups:
            group["lr"] = lr * group["lr_scale"]
        with autocast(device, amp):
            logits = model(x)
        loss = torch.sum(-target * F.log_softmax(logits.float(), dim=1), dim=1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if curve_every and ((step + 1) % curve_every == 0 or step + 1 == total):
            since = losses[curve[-1]["step"] if curve else 0:]
            curve.append({"step": step + 1, "epoch": round((step + 1) / steps_per_epoch, 3),
                          "train_loss": sum(since) / len(since),
                          "train_top1": _top1(model, clean, device, amp),
                          "test_top1": _top1(model, test, device, amp)})
            model.train()
    top1 = curve[-1]["test_top1"] if curve else _top1(model, test, device, amp)
    model.eval()
    out = {"finetune_top1": top1, "finetune_steps": total,
           "finetune_device": str(device), "finetune_precision": precision_name(amp),
           "finetune_final_loss": sum(losses[-50:]) / len(losses[-50:]),
           "finetune_time_s": time.perf_counter() - t0}
    return {**out, "finetune_curve": curve} if curve_every else out
