"""Draw the book's architecture figure (the paper's Fig. 1, with this book's shapes).

    MAE_DATA=../shared/data .venv/bin/python tools/draw_architecture.py

writes book/figures/architecture.svg and .png. The pictures in it are real: an Imagenette
validation image at 128 px, masked at 75 %, and the reconstruction of the reader checkpoint
``wide-imagenette-pixels`` (chapter 6), so the figure shows what the model does, not a sketch.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle  # noqa: E402

import mae.pretrained  # noqa: E402
from mae import patchify  # noqa: E402
from mae.data import load_dataset  # noqa: E402
from mae.visualize import dataset_images, reconstruct  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "book" / "figures"
IMAGE = 7  # which of chapter 6's eight validation images
ENCODER, DECODER, TOKEN, MASK = "#4c72b0", "#dd8452", "#9ecae1", "#d9d9d9"


def box(ax, x, y, w, h, color, text, fontsize=12.5, textcolor="white"):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                fc=color, ec="none"))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", color=textcolor,
            fontsize=fontsize, linespacing=1.4)


def arrow(ax, x0, y0, x1, y1):
    ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=14,
                                 color="#444444", lw=1.2))


def column(ax, x, y0, h, items, w=0.32):
    """A column of token squares: items are image tiles or a colour string."""
    step = h / len(items)
    for i, item in enumerate(items):
        y = y0 + h - (i + 1) * step
        if isinstance(item, str):
            ax.add_patch(Rectangle((x, y + step * 0.06), w, step * 0.88, fc=item, ec="none"))
        else:
            ax.imshow(item, extent=(x, x + w, y + step * 0.06, y + step * 0.94), zorder=2)


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model, _ = mae.pretrained.load("wide-imagenette-pixels")
    model.eval()
    c = model.config
    data = load_dataset("imagenette", "test", img_size=c.img_size)
    image = dataset_images(data, 8, seed=0)[IMAGE:IMAGE + 1]
    rec = reconstruct(model, image, data.mean, data.std, mask_ratio=0.75,
                      generator=torch.Generator().manual_seed(3))
    hidden = rec.mask[0].bool()  # (L,)
    p = c.patch_size
    original = rec.original[0]
    patches = patchify(original[None], p)[0].unflatten(-1, (p, p, c.in_chans))  # (L, p, p, C)
    visible = [t.numpy() for t, h in zip(patches, hidden) if not h]
    L, K = hidden.numel(), int((~hidden).sum())

    plt.rcParams.update({"svg.hashsalt": "mae-book", "font.size": 11})
    fig, ax = plt.subplots(figsize=(12, 5.0))
    ax.set_xlim(0, 13.6)
    ax.set_ylim(-1.2, 4.3)
    ax.axis("off")
    top, h = 0.45, 3.1  # the band every element sits in
    small = 10.5

    # 1. the image, 75 % of its patches hidden
    ax.imshow(rec.masked[0].permute(1, 2, 0).numpy(), extent=(0.1, 2.1, top + 0.55, top + 2.55))
    ax.text(1.1, top + 2.75, "input: 75 % of\nthe patches hidden", ha="center", va="bottom")
    ax.text(1.1, top + 0.3, f"(B, C, H, W)\nL = (H/p)² = {L}", ha="center", va="top",
            fontsize=small)
    arrow(ax, 2.2, top + 1.55, 2.7, top + 1.55)

    # 2. the visible patches, a sequence of K tokens
    column(ax, 2.8, top + 0.1, h - 0.2, visible[:K])
    ax.text(2.96, top + h + 0.15, f"K = {K}\nvisible", ha="center", va="bottom", fontsize=small)
    ax.text(2.96, top - 0.05, "(B, K, P)", ha="center", va="top", fontsize=small)
    arrow(ax, 3.2, top + 1.55, 3.6, top + 1.55)

    # 3. the encoder, on 1 + K tokens only
    box(ax, 3.65, top + 0.1, 2.3, h - 0.2, ENCODER,
        "encoder\n(ViT, width D)\n\nembed + positions,\nCLS in front,\nblocks on\n1 + K tokens",
        fontsize=small)
    ax.text(4.8, top - 0.05, "(B, 1 + K, D)", ha="center", va="top", fontsize=small)
    arrow(ax, 6.0, top + 1.55, 6.45, top + 1.55)

    # 4. back to L positions: mask tokens, unshuffled
    column(ax, 6.55, top + 0.1, h - 0.2, [MASK if hh else TOKEN for hh in hidden[:32]], w=0.3)
    column(ax, 6.9, top + 0.1, h - 0.2, [MASK if hh else TOKEN for hh in hidden[32:]], w=0.3)
    ax.text(7.05, top + h + 0.15, "+ L − K mask\ntokens, unshuffled", ha="center",
            va="bottom", fontsize=small)
    ax.text(7.05, top - 0.05, "(B, 1 + L, D_d)", ha="center", va="top", fontsize=small)
    arrow(ax, 7.3, top + 1.55, 7.7, top + 1.55)

    # 5. the decoder, narrow and shallow, on all L
    box(ax, 7.75, top + 0.45, 1.8, h - 0.9, DECODER,
        "decoder\n(width D_d)\n\na few narrow\nblocks on all\nL positions", fontsize=small)
    ax.text(8.65, top + 0.25, "(B, L, P)", ha="center", va="top", fontsize=small)
    arrow(ax, 9.6, top + 1.55, 10.05, top + 1.55)

    # 6. the prediction, and the loss on hidden patches only
    ax.imshow(rec.pasted[0].permute(1, 2, 0).numpy(), extent=(10.15, 12.15, top + 0.55, top + 2.55))
    ax.text(11.15, top + 2.75, "predicted hidden patches\n(visible ones pasted back)",
            ha="center", va="bottom")
    ax.text(11.15, top + 0.3, "loss: mean squared error\non the hidden patches only",
            ha="center", va="top", fontsize=small)
    ax.imshow(original.permute(1, 2, 0).numpy(), extent=(12.4, 13.5, top + 1.0, top + 2.1))
    ax.text(12.95, top + 2.2, "target", ha="center", va="bottom", fontsize=small)

    legend = [(TOKEN, "encoded visible token"), (MASK, "shared, learned mask token")]
    for i, (color, text) in enumerate(legend):
        ax.add_patch(Rectangle((0.15 + 3.6 * i, -0.62), 0.22, 0.22, fc=color, ec="none"))
        ax.text(0.5 + 3.6 * i, -0.51, text, va="center", fontsize=small)
    ax.text(0.15, -1.0, "after pre-training the decoder is dropped; the encoder is kept",
            ha="left", va="center", fontsize=small, style="italic", color="#444444")
    OUT.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT / "architecture.svg", bbox_inches="tight", metadata={"Date": None})
    fig.savefig(OUT / "architecture.png", bbox_inches="tight", dpi=110,
                metadata={"Software": None})
    print("wrote", OUT / "architecture.svg", "and .png")


if __name__ == "__main__":
    main()
