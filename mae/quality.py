"""What a reconstruction is worth, as a number: the mean squared error of the hidden patches in
pixel space ([0, 1] RGB), beside the simplest fill a person would try, the mean colour of the
image's visible pixels. Masks come from a seed, one noise row per image, so two models with the
same patch grid are scored on exactly the same hidden patches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .data import ImageDataset
from .model import MAE
from .patches import unpatchify
from .visualize import reconstruct


def _resized(x: torch.Tensor, size: int, mode: str = "bilinear") -> torch.Tensor:
    if x.shape[-1] == size:
        return x
    if mode == "nearest":
        return F.interpolate(x, size=(size, size), mode="nearest")
    return F.interpolate(x, size=(size, size), mode=mode, antialias=True, align_corners=False)


def hidden_pixel_error(
    model: MAE, data: ImageDataset, mask_ratio: float = 0.75, seed: int = 0,
    batch_size: int = 256, size: int | None = None,
) -> dict[str, Any]:
    """Mean squared pixel error over the hidden patches of every image of ``data``.

    Each image is resized to the model's input size, masked with noise row i of
    ``torch.rand(len(data), L)`` drawn from ``seed``, and reconstructed as the pictures are
    (`mae.visualize.reconstruct`: norm-pix predictions de-normalised with the visible patches'
    statistics, clipped to [0, 1]). ``size``: the resolution the error is measured at (default:
    the model's); predictions and hidden regions are resized to it (bilinear / nearest) and
    compared with the stored image resized to it, so that models of different input sizes are
    scored on the same pixels. Returns ``mse`` (the model), ``mean_colour_mse`` (each hidden pixel
    filled with the mean colour of the image's visible pixels), their ratio, ``per_image_mse``
    (the model's error on each image's hidden pixels, in the order of ``data``, to compare two
    models image by image), and the settings.
    """
    return hidden_pixel_errors(model, data, [size or model.config.img_size], mask_ratio, seed,
                               batch_size)[0]


@torch.no_grad()
def hidden_pixel_errors(
    model: MAE, data: ImageDataset, sizes: Sequence[int], mask_ratio: float = 0.75,
    seed: int = 0, batch_size: int = 256,
) -> list[dict[str, Any]]:
    """`hidden_pixel_error` at each resolution of ``sizes``, from one pass of the model."""
    if len(set(sizes)) != len(sizes) or not sizes:
        raise ValueError(f"sizes {list(sizes)}: give each resolution once, at least one.")
    c = model.config
    noise = torch.rand(len(data), c.num_patches, generator=torch.Generator().manual_seed(seed))
    was_training = model.training
    model.eval()
    sums = {size: {"model": 0.0, "mean_colour": 0.0, "hidden": 0.0, "per_image": []}
            for size in sizes}
    for start in range(0, len(data), batch_size):
        raw = data.images[start:start + batch_size].float() / 255  # (B, C, H0, W0)
        rec = reconstruct(model, _resized(raw, c.img_size), data.mean, data.std, mask_ratio,
                          noise=noise[start:start + batch_size])
        patches = rec.mask[:, :, None].expand(-1, -1, c.patch_size ** 2 * c.in_chans)
        hidden_full = unpatchify(patches, c.patch_size, (c.grid_size, c.grid_size), c.in_chans)
        for size, total in sums.items():
            hidden = _resized(hidden_full[:, :1], size, "nearest")  # (B, 1, S, S) 1 = hidden
            original = _resized(raw, size)
            prediction = _resized(rec.prediction, size).clamp(0, 1)
            visible = 1 - hidden
            colour = ((original * visible).sum((2, 3), keepdim=True)
                      / visible.sum((2, 3), keepdim=True))
            error = (((prediction - original) ** 2) * hidden).sum((1, 2, 3))  # (B,)
            total["per_image"] += (error / (hidden.sum((1, 2, 3)) * c.in_chans)).tolist()
            total["model"] += error.sum().item()
            total["mean_colour"] += (((colour - original) ** 2) * hidden).sum().item()
            total["hidden"] += hidden.sum().item() * c.in_chans
    model.train(was_training)
    results = []
    for size, total in sums.items():
        mse, baseline = total["model"] / total["hidden"], total["mean_colour"] / total["hidden"]
        results.append({"mse": mse, "mean_colour_mse": baseline,
                        "ratio_to_mean_colour": mse / baseline, "images": len(data),
                        "per_image_mse": total["per_image"],
                        "mask_ratio": c.mask_ratio if mask_ratio is None else mask_ratio,
                        "seed": seed, "size": size, "grid": c.grid_size})
    return results
