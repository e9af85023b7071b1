"""Reconstructions as pictures.

A model trained with the norm-pix loss predicts each hidden patch *normalised by its own mean and
variance*, which the model cannot know. To draw its prediction we de-normalise with statistics of
the *visible* patches of the same image (their mean of means and mean of standard deviations).
Using the hidden patch's own statistics would leak the answer into the picture (PAPER.md).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .augment import normalize
from .data import ImageDataset
from .loss import NORM_PIX_EPS
from .model import MAE
from .patches import patchify, unpatchify


class Reconstruction(NamedTuple):
    original: torch.Tensor  # (B, C, H, W) in [0, 1]
    masked: torch.Tensor  # (B, C, H, W) hidden patches grey
    prediction: torch.Tensor  # (B, C, H, W) the decoder's output for every patch
    pasted: torch.Tensor  # (B, C, H, W) visible patches + predicted hidden ones
    mask: torch.Tensor  # (B, L) 1 = hidden


@torch.no_grad()
def reconstruct(
    model: MAE, images: torch.Tensor, mean, std, mask_ratio: float | None = None,
    noise: torch.Tensor | None = None, generator: torch.Generator | None = None,
) -> Reconstruction:
    """Mask, reconstruct and convert back to [0, 1] pixels.

    images: (B, C, H, W) uint8 (or [0, 1] floats); mean / std: the normalisation used in training.
    """
    c = model.config
    p = c.patch_size
    x = normalize(images, mean, std).to(next(model.parameters()).device)
    _, pred, mask = model(x, mask_ratio=mask_ratio, noise=noise, generator=generator)
    target = patchify(x, p)  # (B, L, P) normalised pixels
    if c.norm_pix_loss:
        visible = (1 - mask).unsqueeze(-1)  # (B, L, 1)
        count = visible.sum(1, keepdim=True)  # (B, 1, 1)
        mu = (target.mean(-1, keepdim=True) * visible).sum(1, keepdim=True) / count  # (B, 1, 1)
        sd = ((target.var(-1, keepdim=True) + NORM_PIX_EPS).sqrt() * visible).sum(1, keepdim=True) / count
        pred = pred * sd + mu  # (B, L, P)
    hidden = mask.unsqueeze(-1)  # (B, L, 1)
    grid = (c.grid_size, c.grid_size)

    def to_pixels(patches: torch.Tensor) -> torch.Tensor:
        img = unpatchify(patches, p, grid, c.in_chans)  # (B, C, H, W) normalised
        m = torch.tensor(mean, device=img.device).view(1, -1, 1, 1)
        s = torch.tensor(std, device=img.device).view(1, -1, 1, 1)
        return (img * s + m).clamp(0, 1).cpu()

    grey = (0.5 - torch.tensor(mean, device=x.device)) / torch.tensor(std, device=x.device)
    grey = grey.repeat(p * p)  # (P,) the same grey for every pixel, channels last
    return Reconstruction(
        original=to_pixels(target), masked=to_pixels(target * (1 - hidden) + grey * hidden),
        prediction=to_pixels(pred), pasted=to_pixels(target * (1 - hidden) + pred * hidden),
        mask=mask.cpu(),
    )


def plot_reconstructions(rec: Reconstruction, title: str = ""):
    """A figure with one row per image: original, masked, prediction, prediction + visible."""
    import matplotlib.pyplot as plt

    n = rec.original.shape[0]
    columns = [("original", rec.original), ("masked", rec.masked),
               ("reconstruction", rec.prediction), ("reconstruction + visible", rec.pasted)]
    fig, axes = plt.subplots(n, 4, figsize=(8, 2 * n + 0.4), squeeze=False)
    for j, (name, imgs) in enumerate(columns):
        axes[0, j].set_title(name, fontsize=9)
        for i in range(n):
            axes[i, j].imshow(imgs[i].permute(1, 2, 0).numpy())
            axes[i, j].axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def dataset_images(data: ImageDataset, count: int, seed: int = 0) -> torch.Tensor:
    """A reproducible sample of ``count`` images (uint8)."""
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:count]
    return data.images[idx]


def plot_grid(rows: dict[str, torch.Tensor], title: str = "", size: float = 1.3):
    """One labelled row per entry of ``rows`` (each (B, C, H, W) in [0, 1]): a compact way to
    put the same images side by side, e.g. originals, masked, and several models' reconstructions."""
    import matplotlib.pyplot as plt

    n = max(imgs.shape[0] for imgs in rows.values())
    fig, axes = plt.subplots(len(rows), n, figsize=(size * n + 1.6, size * len(rows) + 0.3),
                             squeeze=False)
    for i, (label, imgs) in enumerate(rows.items()):
        for j in range(n):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < imgs.shape[0]:
                ax.imshow(imgs[j].permute(1, 2, 0).numpy())
            else:
                ax.axis("off")
    # The page shrinks a wide figure to its column: labels grow with the width so that they stay
    # readable there (about 11 px on a 700-px column).
    font = 8 * max(1.0, fig.get_figwidth() / 7)
    for i, label in enumerate(rows):
        axes[i, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=font)
    if title:
        fig.suptitle(title, fontsize=font * 1.2)
    fig.tight_layout()
    return fig


def reconstruct_sampled(model: MAE, images: torch.Tensor, mean, std, mask_ratio: float,
                        sampling: str = "random", seed: int = 0) -> Reconstruction:
    """`reconstruct` with a mask drawn by one of the samplings of Table 1f ("random", "block",
    "grid"), reproducible from ``seed``, whatever sampling the model was trained with."""
    from .masking import sample_noise

    g = torch.Generator().manual_seed(seed)
    noise = sample_noise(sampling, images.shape[0], model.config.grid_size, mask_ratio,
                         generator=g)
    return reconstruct(model, images, mean, std, mask_ratio, noise=noise)


def explorer(model: MAE, images: torch.Tensor, mean, std):
    """An interactive view for Jupyter / Colab / Binder (ipywidgets): choose an image, the mask
    ratio, the sampling and the seed, and see the masked image and the reconstruction. Needs a
    live kernel; in a static page it shows nothing."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    from .config import MASK_SAMPLINGS, ConfigError

    def show(image: int, mask_ratio: float, sampling: str, seed: int) -> None:
        try:
            rec = reconstruct_sampled(model, images[image:image + 1], mean, std, mask_ratio,
                                      sampling, seed)
        except (ConfigError, ValueError) as e:  # e.g. a ratio grid sampling cannot make
            print(f"{e}")
            return
        plot_reconstructions(rec, f"{mask_ratio:.0%} hidden, {sampling} sampling, seed {seed}")
        plt.show()

    return widgets.interactive(
        show, image=widgets.IntSlider(0, 0, len(images) - 1),
        mask_ratio=widgets.FloatSlider(0.75, min=0.05, max=0.95, step=0.05),
        sampling=widgets.Dropdown(options=list(MASK_SAMPLINGS), value="random"),
        seed=widgets.IntSlider(0, 0, 99))
