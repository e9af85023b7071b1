"""Draw the released-weights page's picture of the reader's own picture model, the paper's
Fig. 4 redone at small scale: Imagenette validation images reconstructed by
``wide-imagenette-pixels`` (trained at 75 % masking) at 75, 85 and 95 % masking.

    MAE_DATA=../shared/data .venv/bin/python tools/draw_own_model.py

writes book/figures/own_model_fig4.jpg and prints the figure's numbers: the mean squared error on
the hidden pixels of the images drawn, at each ratio (the page quotes them).
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import torch  # noqa: E402

import mae.pretrained  # noqa: E402
from mae.data import load_dataset  # noqa: E402
from mae.patches import patchify  # noqa: E402
from mae.visualize import dataset_images, plot_grid, reconstruct_sampled  # noqa: E402

NAME = "wide-imagenette-pixels"
OUT = Path(__file__).resolve().parents[1] / "book" / "figures" / "own_model_fig4.jpg"
RATIOS = (0.75, 0.85, 0.95)  # the paper's Fig. 4


def main() -> None:
    torch.set_num_threads(2)
    model, _ = mae.pretrained.load(NAME)
    model.eval()
    c = model.config
    val = load_dataset("imagenette", "test", img_size=c.img_size)
    images = dataset_images(val, 6, seed=4)
    rows = {"original": images.float() / 255}
    for ratio in RATIOS:
        rec = reconstruct_sampled(model, images, val.mean, val.std, ratio, "random", seed=0)
        visible = int(c.num_patches * (1 - ratio))
        rows[f"{ratio:.0%} hidden\n({visible} of {c.num_patches} seen)"] = rec.masked
        rows[f"{ratio:.0%}: filled in"] = rec.pasted
        hidden = rec.mask.bool()
        diff = patchify(rec.prediction, c.patch_size) - patchify(rec.original, c.patch_size)
        print(f"{ratio:.0%} hidden: mean squared error on hidden pixels "
              f"{diff[hidden].pow(2).mean().item():.4f}")
    fig = plot_grid(rows, f"{NAME}, trained at 75% masking, applied at 75, 85 and 95%",
                    size=1.3)
    fig.savefig(OUT, dpi=90, pil_kwargs={"quality": 85})  # a photo: JPEG is a fifth of PNG
    print(f"wrote {OUT.relative_to(OUT.parents[2])} ({OUT.stat().st_size // 1000} kB)")


if __name__ == "__main__":
    main()
