"""Draw the mechanics of chapters 1-5 from the package's own tensors.

    MAE_DATA=../shared/data .venv/bin/python tools/draw_mechanics.py

writes book/figures/<name>.png for every name in FIGURES. Nothing is sketched by hand: each
drawing calls `mae` (patchify, random_masking, norm_pix_target, a real Block, gather_tokens as
the decoder uses it) on a real CIFAR-10 test image or a small grid, checks the result against
the library, and draws the numbers it got.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle  # noqa: E402

from mae import MAE, MAEConfig, patchify, random_masking  # noqa: E402
from mae.augment import normalize  # noqa: E402
from mae.data import load_dataset  # noqa: E402
from mae.loss import norm_pix_target  # noqa: E402
from mae.masking import gather_tokens  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "book" / "figures"
P = 4  # the micro preset's patch size
HIDDEN, KEPT, CHANNELS = "#8c8c8c", "#2ca02c", ("#d62728", "#2ca02c", "#1f77b4")
PALETTE = [plt.get_cmap("tab10").colors[i] for i in (0, 1, 2, 3, 4, 5, 6, 8, 9)]  # no grey


def colour(i: int) -> tuple:
    """The colour of patch i in every row of a drawing (grey is kept for hidden)."""
    return PALETTE[i % len(PALETTE)]


def cifar(n: int = 1) -> tuple[torch.Tensor, object]:
    test = load_dataset("cifar10", "test")
    return test.images[:n], test


def grid_lines(ax, side: int, p: int, color: str = "white") -> None:
    for k in range(1, side // p):
        ax.axhline(k * p - 0.5, color=color, lw=0.8)
        ax.axvline(k * p - 0.5, color=color, lw=0.8)
    ax.set_xticks([])
    ax.set_yticks([])


def outline(ax, index: int, grid: int, p: int, color: str = "yellow") -> None:
    r, c = divmod(index, grid)
    ax.add_patch(Rectangle((c * p - 0.5, r * p - 0.5), p, p, fill=False, ec=color, lw=2.5))


def channel_bars(ax, values: torch.Tensor, title: str) -> None:
    """The P values of one patch, in patchify's order (pixel by pixel, channels last)."""
    ax.bar(range(len(values)), values.tolist(), width=0.8,
           color=[CHANNELS[i % 3] for i in range(len(values))])
    ax.set_xticks([3 * k + 1 for k in range(len(values) // 3)])
    ax.set_xticklabels([str(k) for k in range(len(values) // 3)], fontsize=9)
    ax.set_xlim(-1, len(values))
    ax.set_xlabel("pixel of the patch (each: red, green, blue)")
    ax.set_title(title, fontsize=11)


def boxes(ax, y: float, labels, colors, x0: float = 0.0, edge=None) -> None:
    """A row of labelled token boxes, 0.8 wide, one per unit of x from x0."""
    for i, (label, color) in enumerate(zip(labels, colors)):
        ax.add_patch(FancyBboxPatch((x0 + i, y), 0.8, 0.7, ec=edge[i] if edge else "none",
                                    fc=color, lw=2.5,
                                    boxstyle="round,pad=0.02,rounding_size=0.08"))
        ax.text(x0 + i + 0.4, y + 0.35, label, ha="center", va="center", fontsize=11)


def draw_patchify() -> plt.Figure:
    images, test = cifar()
    x = images.float() / 255  # (1, 3, 32, 32)
    patches = patchify(x, P)  # (1, L, P) = (1, 64, 48)
    index, grid = 10, 32 // P
    r, c = divmod(index, grid)
    square = x[0, :, r * P:(r + 1) * P, c * P:(c + 1) * P]  # (3, p, p), cut by hand
    assert torch.equal(patches[0, index], square.permute(1, 2, 0).flatten())

    fig = plt.figure(figsize=(11, 7.2), layout="constrained")
    spec = fig.add_gridspec(2, 3, height_ratios=[3, 1.7], width_ratios=[1, 1, 1.2])
    ax = fig.add_subplot(spec[0, 0])
    ax.imshow(x[0].permute(1, 2, 0))
    grid_lines(ax, 32, P)
    outline(ax, index, grid, P)
    ax.set_title(f"a {test.classes[int(test.labels[0])]}, 32 x 32:\n8 x 8 patches of 4 x 4",
                 fontsize=11)
    ax = fig.add_subplot(spec[0, 1])
    ax.imshow(square.permute(1, 2, 0))
    for k in range(P * P):
        ax.text(k % P, k // P, str(k), ha="center", va="center", fontsize=12, color="white",
                bbox={"fc": "black", "alpha": 0.45, "ec": "none", "pad": 1.5})
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"patch {index} (row {r}, column {c}):\nits 16 pixels, read row by row",
                 fontsize=11)
    ax = fig.add_subplot(spec[0, 2])
    ax.imshow(patches[0], cmap="gray", aspect="auto", interpolation="nearest")
    ax.add_patch(Rectangle((-0.5, index - 0.5), 48, 1, fill=False, ec="yellow", lw=2))
    ax.set_xlabel("P = 4 x 4 x 3 = 48 values")
    ax.set_ylabel("patch index (L = 64)")
    ax.set_title("patchify(x, 4)[0]: one row per patch", fontsize=11)
    ax = fig.add_subplot(spec[1, :])
    channel_bars(ax, patches[0, index],
                 f"row {index} of the matrix: 16 pixels x (R, G, B), channels last")
    ax.set_ylabel("value in [0, 1]")
    return fig


def draw_masking() -> plt.Figure:
    torch.manual_seed(0)  # the noise chapter 2 prints
    L, ratio = 8, 0.75
    noise = torch.rand(1, L)
    tokens = torch.arange(L, dtype=torch.float32).view(1, L, 1)  # token i holds i
    out = random_masking(tokens, ratio, noise=noise)
    ids_shuffle = noise.argsort(dim=1)[0]
    K = out.ids_keep.shape[1]
    assert torch.equal(ids_shuffle[:K], out.ids_keep[0])
    assert torch.equal(ids_shuffle.argsort(), out.ids_restore[0])
    mask = out.mask[0].int().tolist()

    fig, ax = plt.subplots(figsize=(11, 5.8))
    ax.set_xlim(-4.2, L + 2.6)
    ax.set_ylim(0.4, 8.2)
    ax.axis("off")
    color = [colour(i) for i in range(L)]
    rows = {"patches, in patch order": 7.2, "ids_shuffle = argsort(noise)": 4.9,
            "ids_restore = argsort(ids_shuffle)": 2.6, "mask (1 = hidden)": 0.8}
    for text, y in rows.items():
        ax.text(-0.3, y + 0.35, text, ha="right", va="center", fontsize=11)
    boxes(ax, 7.2, [str(i) for i in range(L)], color)
    for i, v in enumerate(noise[0].tolist()):
        ax.text(i + 0.4, 6.95, f"{v:.3f}", ha="center", va="top", fontsize=10)
    ax.text(-0.3, 6.8, "noise", ha="right", va="center", fontsize=10, style="italic")
    for j, i in enumerate(ids_shuffle.tolist()):  # patch i goes to place j of the sorted row
        ax.plot([i + 0.4, j + 0.4], [6.45, 5.6], color=colour(i), lw=1.2, alpha=0.8)
    edge = ["black" if j < K else "none" for j in range(L)]
    boxes(ax, 4.9, [str(i) for i in ids_shuffle.tolist()],
          [color[i] for i in ids_shuffle.tolist()], edge=edge)
    ax.text(K / 2 - 0.05, 4.55, f"ids_keep: the K = {K}\nsmallest noises", ha="center",
            va="top", fontsize=10, color=KEPT)
    ax.text(K + (L - K) / 2 - 0.05, 4.55, f"the other L - K = {L - K}: hidden",
            ha="center", va="top", fontsize=10, color="#555555")
    boxes(ax, 2.6, [str(i) for i in out.ids_restore[0].tolist()], color)
    ax.text(L + 0.1, 2.95, "patch i sits at place\nids_restore[i] of the\nshuffled row",
            va="center", fontsize=10)
    boxes(ax, 0.8, [str(m) for m in mask], [HIDDEN if m else "white" for m in mask],
          edge=[HIDDEN if m else KEPT for m in mask])
    ax.text(L + 0.1, 1.15, "[0] * K + [1] * (L - K),\ngathered with ids_restore", va="center",
            fontsize=10)
    visible = out.visible.flatten().int().tolist()
    ax.text(L + 0.1, 5.25, f"random_masking(...).visible\n= gather(x, ids_keep) = {visible}",
            va="center", fontsize=10)
    fig.suptitle(f"random_masking on L = {L} patches at a mask ratio of {ratio}: "
                 "one argsort of noise", fontsize=12)
    return fig


def draw_norm_pix() -> plt.Figure:
    images, test = cifar()
    x = normalize(images, test.mean, test.std)  # (1, 3, 32, 32), standardised as in chapter 3
    patches = patchify(x, P)[0]  # (L, P)
    index = 32  # a bright, low-contrast patch of the cat's face: normalising changes it most
    values = patches[index]
    target = norm_pix_target(patches)[index]
    mean, std = values.mean().item(), values.std().item()  # unbiased, as the loss
    torch.testing.assert_close(target, (values - mean) / (std ** 2 + 1e-6) ** 0.5)

    fig = plt.figure(figsize=(11, 6.8), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.5, 2])
    ax = top.add_subplot(1, 3, 1)
    ax.imshow(images[0].permute(1, 2, 0))
    grid_lines(ax, 32, P)
    outline(ax, index, 32 // P, P)
    ax.set_title(f"patch {index} of the image", fontsize=11)
    pixels = patchify(images.float() / 255, P)[0, index].view(P, P, 3)
    stretched = target.view(P, P, 3)
    stretched = (stretched - stretched.min()) / (stretched.max() - stretched.min())
    for col, (picture, title) in enumerate(
            ((pixels, "its pixels, as they are"),
             (stretched, "its target: brightness and\ncontrast gone, pattern kept"))):
        ax = top.add_subplot(1, 3, col + 2)
        ax.imshow(picture.numpy(), vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=11)
    for col, (vals, m, s, title, ylabel) in enumerate((
            (values, mean, std, f"the patch's 48 values: mean {mean:.2f}, std {std:.2f}",
             "standardised pixel value"),
            (target, 0.0, target.std().item(), "target = (value - mean) / std",
             "target value"))):
        ax = bottom.add_subplot(1, 2, col + 1)
        ax.axhspan(m - s, m + s, color="#e4e4e4", zorder=0, label="mean ± 1 std")
        channel_bars(ax, vals, title)
        ax.axhline(m, color="black", lw=1.2, ls="--", label="mean")
        ax.set_xticks(ax.get_xticks()[::3])
        ax.set_ylim(-3, 3)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=9, loc="upper right")
    fig.suptitle("The norm-pix target of one CIFAR-10 patch (norm_pix_target)", fontsize=12)
    return fig


def draw_block() -> plt.Figure:
    images, test = cifar(4)
    config = MAEConfig.preset("micro")
    torch.manual_seed(0)
    model = MAE(config).eval()
    block = model.encoder.blocks[0]
    with torch.no_grad():
        captured = {}
        hook = block.register_forward_hook(lambda m, args, out: captured.update(x=args[0]))
        model.encoder(normalize(images, test.mean, test.std), 0.75, noise=torch.rand(4, 64))
        hook.remove()
        x = captured["x"]  # (B, 1 + K, D): what the first block really receives
        attn = block.attn(block.norm1(x))
        h = x + attn
        mlp = block.mlp(block.norm2(h))
        assert torch.equal(h + mlp, block(x))
    B, N, D = x.shape
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    rms = lambda t: t.pow(2).mean().sqrt().item()  # noqa: E731

    fig, ax = plt.subplots(figsize=(11, 4.6))
    ax.set_xlim(0, 12)
    ax.set_ylim(0.1, 4.6)
    ax.axis("off")
    y, stream = 1.9, "#4c72b0"
    ax.plot([0.2, 11.8], [y, y], color=stream, lw=3, zorder=1)
    ax.text(0.2, y - 0.3, f"x: ({B}, {N}, {D})\nCLS + {N - 1} visible", va="top", fontsize=10)
    ax.text(11.8, y + 0.15, f"output:\n({B}, {N}, {D})", ha="right", va="bottom", fontsize=10)
    heads = block.attn.heads
    branches = ((0.8, (f"LayerNorm\nnorm1: {count(block.norm1)}", 1.4),
                 (f"Attention, {heads} heads of {D // heads}\nattn: {count(block.attn):,}", 2.6),
                 attn, x),
                (6.0, (f"LayerNorm\nnorm2: {count(block.norm2)}", 1.4),
                 (f"MLP {D} → {block.mlp.fc1.out_features} → {D}\nmlp: {count(block.mlp):,}", 2.6),
                 mlp, h))
    for x0, (ln, w1), (layer, w2), update, base in branches:
        for left, w, text, fc in ((x0 + 0.4, w1, ln, "#9ecae1"),
                                  (x0 + 0.6 + w1, w2, layer, "#dd8452")):
            ax.add_patch(FancyBboxPatch((left, 3.0), w, 1.0, fc=fc, ec="none",
                                        boxstyle="round,pad=0.03,rounding_size=0.1"))
            ax.text(left + w / 2, 3.5, text, ha="center", va="center", fontsize=10)
        plus = x0 + 0.3 + w1 + w2  # under the layer's right end
        for start, end, style in (((x0, y), (x0 + 0.4, 3.5), "angle,angleA=90,angleB=0,rad=5"),
                                  ((x0 + 0.4 + w1, 3.5), (x0 + 0.6 + w1, 3.5), "arc3"),
                                  ((plus, 3.0), (plus, y + 0.2), "arc3")):
            ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=12,
                                         connectionstyle=style, color="#444444"))
        ax.add_patch(plt.Circle((plus, y), 0.2, fc="white", ec=stream, lw=2, zorder=3))
        ax.text(plus, y, "+", ha="center", va="center", fontsize=13, zorder=4)
        ax.text(plus, y - 0.3, f"RMS: stream {rms(base):.2f},\nbranch adds {rms(update):.2f}",
                ha="center", va="top", fontsize=9.5)
    ax.text(6.0, 0.35, "h = x + attn(norm1(x));   output = h + mlp(norm2(h))   "
            "(equal to block(x), asserted);  parameter counts in the boxes",
            ha="center", fontsize=10.5, style="italic")
    ax.set_title(f"One pre-norm ViT block: the first of the micro encoder's "
                 f"{config.encoder_layers}, on real tokens of 4 CIFAR-10 images", fontsize=12)
    return fig


def draw_unshuffle() -> plt.Figure:
    L, ratio = 16, 0.75
    g = torch.Generator().manual_seed(3)
    out = random_masking(torch.arange(L, dtype=torch.float32).view(1, L, 1), ratio,
                         generator=g)  # token i holds i: its patch index
    K = out.ids_keep.shape[1]
    shuffled = torch.cat([out.visible, torch.full((1, L - K, 1), -1.0)], dim=1)  # -1: mask token
    placed = gather_tokens(shuffled, out.ids_restore)[0, :, 0]  # as Decoder.forward does
    assert torch.equal((placed < 0).float(), out.mask[0])
    visible = out.visible.flatten().int().tolist()

    fig, ax = plt.subplots(figsize=(11, 4.6))
    ax.set_xlim(-4.6, L + 0.3)
    ax.set_ylim(-0.3, 5.0)
    ax.axis("off")

    def label(i):
        return "M" if i < 0 else str(i)

    def fill(i):  # a visible patch's colour is its place in ids_keep: K distinct colours
        return HIDDEN if i < 0 else colour(visible.index(i))

    rows = ((4.0, f"encoder output: CLS + K = {K}\nvisible, in shuffled order",
             ["CLS"] + [str(i) for i in visible], ["#cccccc"] + [fill(i) for i in visible], -1),
            (2.2, f"CLS set aside, + L - K = {L - K}\nmask tokens (one learned vector)",
             [label(int(i)) for i in shuffled.flatten()],
             [fill(int(i)) for i in shuffled.flatten()], 0),
            (0.2, "gather_tokens(·, ids_restore):\nback in patch order",
             [label(int(i)) for i in placed], [fill(int(i)) for i in placed], 0))
    for y, text, labels, colors, x0 in rows:
        ax.text(-1.3, y + 0.35, text, ha="right", va="center", fontsize=10.5)
        boxes(ax, y, labels, colors, x0=x0)
    for j, i in enumerate(visible):
        ax.plot([j + 0.4, j + 0.4], [3.95, 2.9], color=fill(i), lw=1.2)
    slot = [int(i) for i in out.ids_restore[0]]
    for j, i in enumerate(slot):  # patch j takes slot ids_restore[j] of the shuffled row
        token = int(shuffled[0, i, 0])
        ax.plot([i + 0.4, j + 0.4], [2.15, 0.9], color=fill(token),
                lw=1.5 if token >= 0 else 0.8, alpha=0.9 if token >= 0 else 0.45)
    fig.suptitle(f"The decoder's input on L = {L} patches: visible tokens, mask tokens, "
                 "unshuffled (then CLS and positions are added)", fontsize=12)
    return fig


FIGURES = {"patchify": draw_patchify, "masking": draw_masking, "norm_pix": draw_norm_pix,
           "vit_block": draw_block, "decoder_unshuffle": draw_unshuffle}


def main() -> None:
    torch.set_num_threads(1)
    plt.rcParams.update({"font.size": 11})
    OUT.mkdir(parents=True, exist_ok=True)
    for name, draw in FIGURES.items():
        fig = draw()
        fig.savefig(OUT / f"{name}.png", bbox_inches="tight", dpi=110,
                    metadata={"Software": None})
        plt.close(fig)
        print("wrote", OUT / f"{name}.png", f"{(OUT / f'{name}.png').stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
