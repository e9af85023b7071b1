import torch

from conftest import SMALL
from mae import MAE, MAEConfig, patchify, unpatchify
from mae.visualize import plot_reconstructions, reconstruct

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def test_norm_pix_pictures_do_not_leak_hidden_statistics():
    """The drawn prediction depends on visible pixels only: changing hidden patches changes
    nothing (de-normalising with the hidden target's own statistics would fail this)."""
    model = MAE(MAEConfig.from_dict({**SMALL, "norm_pix_loss": True})).eval()
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    noise = torch.rand(2, 64)
    a = reconstruct(model, images, MEAN, STD, noise=noise)
    patches = patchify(images.float(), 4)
    patches[a.mask.bool()] = 255 - patches[a.mask.bool()]
    changed = unpatchify(patches, 4).to(torch.uint8)
    b = reconstruct(model, changed, MEAN, STD, noise=noise)
    torch.testing.assert_close(a.prediction, b.prediction)
    assert not torch.equal(a.original, b.original)
    # Visible patches are pasted back unchanged.
    visible = ~a.mask.bool()
    torch.testing.assert_close(patchify(a.pasted, 4)[visible], patchify(a.original, 4)[visible])
    assert a.original.min() >= 0 and a.original.max() <= 1
    torch.testing.assert_close(a.original, images.float() / 255, atol=1e-5, rtol=0)


def test_plot_has_a_row_per_image():
    model = MAE(MAEConfig.from_dict(SMALL)).eval()
    rec = reconstruct(model, torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8), MEAN, STD,
                      generator=torch.Generator().manual_seed(0))
    fig = plot_reconstructions(rec, "test")
    assert len(fig.axes) == 12


def test_plot_grid_has_a_labelled_row_per_entry():
    from mae.visualize import plot_grid

    rows = {"original": torch.rand(3, 3, 8, 8), "fewer": torch.rand(2, 3, 8, 8)}
    fig = plot_grid(rows, "t")
    assert len(fig.axes) == 6 and fig.axes[0].get_ylabel() == "original"
    assert fig.axes[3].get_ylabel() == "fewer" and not fig.axes[5].axison


def test_sampled_reconstructions_hide_what_each_sampling_hides():
    from mae.visualize import reconstruct_sampled

    model = MAE(MAEConfig.from_dict(SMALL)).eval()
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    for sampling in ("random", "block", "grid"):
        rec = reconstruct_sampled(model, images, MEAN, STD, 0.75, sampling, seed=3)
        assert rec.mask.sum(1).tolist() == [48, 48], sampling
        again = reconstruct_sampled(model, images, MEAN, STD, 0.75, sampling, seed=3)
        assert torch.equal(rec.mask, again.mask)
    grid = reconstruct_sampled(model, images, MEAN, STD, 0.75, "grid", seed=3).mask
    visible_per_cell = (1 - grid).view(2, 4, 2, 4, 2).sum((2, 4))  # (B, 4, 4) cells of 2 x 2
    assert visible_per_cell.eq(1).all()


def test_explorer_redraws_for_each_choice():
    from mae.visualize import explorer

    model = MAE(MAEConfig.from_dict(SMALL)).eval()
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    view = explorer(model, images, MEAN, STD)
    assert [c.description for c in view.children[:4]] == ["image", "mask_ratio", "sampling", "seed"]
    view.children[2].value = "grid"
    view.children[1].value = 0.5  # grid sampling cannot hide half: the reason is printed
    view.update()  # no exception escapes into the notebook
    assert view.result is None
