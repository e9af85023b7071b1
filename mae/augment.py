"""Batched augmentation on the device: normalisation, random-resized crops and flips for a whole
batch in one `grid_sample` call, and the evaluation resize. No worker processes, no per-sample
Python: the in-memory datasets of `mae.data` are indexed and augmented as one tensor.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 or [0, 1] float (B, C, H, W) -> standardised float32."""
    x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def crop_boxes(
    batch: int, height: int, width: int, generator: torch.Generator,
    scale: tuple[float, float] = (0.2, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """RandomResizedCrop boxes for a batch, torchvision's rule vectorised: up to 10 tries per
    image, else a centre crop. Returns (B, 4) float: top, left, h, w in pixels."""
    tries = 10
    area = height * width * torch.empty(batch, tries).uniform_(*scale, generator=generator)
    log_r = torch.empty(batch, tries).uniform_(math.log(ratio[0]), math.log(ratio[1]),
                                               generator=generator)
    aspect = torch.exp(log_r)
    w = torch.sqrt(area * aspect).round()  # (B, tries)
    h = torch.sqrt(area / aspect).round()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.float().argmax(dim=1)  # (B,) first valid try
    h = h.gather(1, first[:, None]).squeeze(1)
    w = w.gather(1, first[:, None]).squeeze(1)
    u = torch.rand(batch, 2, generator=generator)
    top = torch.floor(u[:, 0] * (height - h + 1))
    left = torch.floor(u[:, 1] * (width - w + 1))
    # Fallback (no valid try): centre crop at the clamped aspect ratio.
    in_ratio = width / height
    fw, fh = (width, round(width / ratio[0])) if in_ratio < ratio[0] else \
        (round(height * ratio[1]), height) if in_ratio > ratio[1] else (width, height)
    bad = ~ok.any(dim=1)
    h = torch.where(bad, torch.full_like(h, fh), h)
    w = torch.where(bad, torch.full_like(w, fw), w)
    top = torch.where(bad, torch.full_like(top, (height - fh) // 2), top)
    left = torch.where(bad, torch.full_like(left, (width - fw) // 2), left)
    return torch.stack([top, left, h, w], dim=1)  # (B, 4)


def augment(
    images: torch.Tensor, out_size: int, boxes: torch.Tensor, flips: torch.Tensor,
    mean, std, mode: str = "bilinear",
) -> torch.Tensor:
    """Crop each image to its box, resize to out_size, flip where asked, normalise.

    One affine `grid_sample` for the whole batch, on the images' device. ``mode``: bilinear,
    or bicubic (as the official fine-tuning's transform), whose overshoot is clipped to the
    [0, 1] pixel range before normalising, as a uint8 image would be.
    images: (B, C, H, W) uint8; boxes: (B, 4) top, left, h, w; flips: (B,) bool.
    Returns (B, C, out_size, out_size) float32.
    """
    B, C, H, W = images.shape
    boxes = boxes.to(images.device)
    top, left, h, w = boxes.unbind(1)
    sx = w / W * torch.where(flips.to(images.device), -1.0, 1.0)  # negative scale mirrors
    sy = h / H
    cx = (2 * left + w) / W - 1  # crop centre in [-1, 1] (align_corners=False)
    cy = (2 * top + h) / H - 1
    zero = torch.zeros_like(sx)
    theta = torch.stack([torch.stack([sx, zero, cx], 1), torch.stack([zero, sy, cy], 1)], 1)
    grid = F.affine_grid(theta, [B, C, out_size, out_size], align_corners=False)  # (B, S, S, 2)
    if mode == "bicubic":
        x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        x = F.grid_sample(x, grid, mode="bicubic", padding_mode="reflection", align_corners=False)
        return normalize(x.clamp_(0, 1), mean, std)
    x = normalize(images, mean, std)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def resize_batch(images: torch.Tensor, out_size: int, mean, std) -> torch.Tensor:
    """Evaluation transform: normalise, and resize (antialiased) if the size differs."""
    x = normalize(images, mean, std)
    if x.shape[-1] != out_size:
        x = F.interpolate(x, size=(out_size, out_size), mode="bilinear", antialias=True,
                          align_corners=False)
    return x
