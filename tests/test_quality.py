"""The hidden-patch pixel error: its mean-colour baseline, its fixed masks, a real model."""

from __future__ import annotations

import pytest
import torch

from conftest import SMALL
from mae import MAE
from mae.data import DataError, ImageDataset
from mae.quality import hidden_pixel_error, hidden_pixel_errors


def dataset(images: torch.Tensor) -> ImageDataset:
    return ImageDataset("synthetic", "test", images, torch.zeros(len(images), dtype=torch.long),
                        ["x"], (0.5,) * 3, (0.25,) * 3)


def test_one_colour_images_cost_the_mean_colour_fill_nothing():
    colours = torch.randint(0, 256, (5, 3, 1, 1), generator=torch.Generator().manual_seed(0))
    flat = dataset(colours.to(torch.uint8).expand(5, 3, 32, 32).contiguous())
    got = hidden_pixel_error(MAE(SMALL), flat, seed=1)
    assert got["mean_colour_mse"] == pytest.approx(0.0, abs=1e-12)
    assert got["mse"] >= 0 and got["images"] == 5 and got["grid"] == 8


def test_masks_come_from_the_seed_alone_and_the_size_is_where_pixels_are_compared():
    images = torch.randint(0, 256, (7, 3, 64, 64), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(2))
    model, data = MAE(SMALL), dataset(images)  # stored at 64 px, the model takes 32
    a = hidden_pixel_error(model, data, seed=3, batch_size=2)
    b = hidden_pixel_error(model, data, seed=3, batch_size=7)
    assert a["mse"] == pytest.approx(b["mse"], rel=1e-6)
    assert a["mean_colour_mse"] == pytest.approx(b["mean_colour_mse"], rel=1e-6)
    assert hidden_pixel_error(model, data, seed=4)["mean_colour_mse"] != a["mean_colour_mse"]
    at_64 = hidden_pixel_error(model, data, seed=3, size=64)
    assert at_64["size"] == 64 and at_64["mean_colour_mse"] != a["mean_colour_mse"]


def test_several_sizes_from_one_pass_equal_one_size_at_a_time():
    images = torch.randint(0, 256, (6, 3, 64, 64), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(5))
    model, data = MAE(SMALL), dataset(images)
    both = hidden_pixel_errors(model, data, [64, 32], seed=2, batch_size=4)
    # every image has as many hidden pixels, so the mean of the images' errors is the error
    assert sum(both[0]["per_image_mse"]) / 6 == pytest.approx(both[0]["mse"], rel=1e-6)
    for got in both:
        alone = hidden_pixel_error(model, data, seed=2, size=got["size"])
        assert got.pop("per_image_mse") == pytest.approx(alone.pop("per_image_mse"), rel=1e-5)
        assert got == pytest.approx(alone, rel=1e-6)
    with pytest.raises(ValueError, match="give each resolution once"):
        hidden_pixel_errors(model, data, [32, 32])


def test_the_trained_picture_model_beats_the_mean_colour_fill():
    import mae.pretrained
    from mae.data import load_dataset

    model, configs = mae.pretrained.load("micro-imagenette-pixels")
    try:
        val = load_dataset("imagenette", "test", img_size=model.config.img_size).subset(128)
    except DataError as e:
        pytest.skip(f"Imagenette not available: {e}")
    got = hidden_pixel_error(model, val)
    assert got["mse"] < 0.9 * got["mean_colour_mse"]


def test_the_wide_picture_model_beats_the_first_one_on_the_same_hidden_patches():
    import mae.pretrained
    from mae.data import load_dataset

    wide, _ = mae.pretrained.load("wide-imagenette-pixels")
    first, _ = mae.pretrained.load("micro-imagenette-pixels")
    try:
        val = load_dataset("imagenette", "test", img_size=wide.config.img_size).subset(128)
    except DataError as e:
        pytest.skip(f"Imagenette not available: {e}")
    new, old = (hidden_pixel_error(m, val, size=64) for m in (wide, first))
    assert new["mean_colour_mse"] == old["mean_colour_mse"]  # the same hidden patches
    assert new["mse"] < 0.95 * old["mse"] and new["mse"] < 0.5 * new["mean_colour_mse"]
    better = sum(a < b for a, b in zip(new["per_image_mse"], old["per_image_mse"]))
    assert better > 0.7 * len(val)
