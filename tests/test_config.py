import dataclasses

import pytest
import torch

from mae import MAE, PRESETS, ConfigError, MAEConfig


def test_defaults_are_vit_b_with_paper_decoder():
    c = MAEConfig()
    assert (c.img_size, c.patch_size, c.encoder_dim, c.encoder_layers, c.encoder_heads) == (
        224, 16, 768, 12, 12)
    assert (c.decoder_dim, c.decoder_layers, c.mask_ratio) == (512, 8, 0.75)


def test_derived_properties():
    c = MAEConfig.preset("micro")
    assert c.grid_size == 8 and c.num_patches == 64
    assert c.patch_dim == 4 * 4 * 3
    assert c.num_visible == 16
    assert c.encoder_mlp_dim == 512


def test_frozen_and_replace_validates():
    c = MAEConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.patch_size = 8
    assert c.replace(patch_size=8).num_patches == 28 * 28
    with pytest.raises(ConfigError, match="not divisible by patch_size"):
        c.replace(patch_size=15)


def test_round_trip_dict():
    c = MAEConfig.preset("tiny", mask_ratio=0.5)
    assert MAEConfig.from_dict(c.to_dict()) == c


def test_numpy_scalars_become_python_values_and_round_trip_through_json():
    """A sweep written with numpy (np.linspace, an array's entries) builds the same configs as
    plain numbers, however it builds them, and they are recorded as JSON."""
    import json

    import numpy as np

    from mae.recipe import EvalConfig, TrainConfig

    plain = MAEConfig.preset("micro", encoder_dim=64, mask_ratio=0.5, cls_token=False)
    for made in (MAEConfig.preset("micro", encoder_dim=np.int64(64), mask_ratio=np.float32(0.5),
                                  cls_token=np.bool_(False)),
                 MAEConfig(**{**PRESETS["micro"], "encoder_dim": np.int64(64),
                              "mask_ratio": np.float64(0.5), "cls_token": np.bool_(False)}),
                 plain.replace(encoder_dim=np.int32(64), mask_ratio=np.array(0.5))):
        assert made == plain and type(made.encoder_dim) is int
        assert MAEConfig.from_dict(json.loads(json.dumps(made.to_dict()))) == plain
    train = TrainConfig(batch_size=np.int64(64), base_lr=np.float32(1e-3))
    assert json.loads(json.dumps(train.to_dict()))["base_lr"] == 1e-3  # not 0.0010000000474...
    assert EvalConfig.from_dict({"knn_k": np.int64(5)}).knn_k == 5
    with pytest.raises(ConfigError, match="encoder_dim' must be of type int, got str"):
        MAEConfig(encoder_dim="64")  # called directly, the types are checked too
    with pytest.raises(ConfigError, match="patch_size' must be of type int, got float"):
        MAEConfig.from_dict({"patch_size": np.float64(4.0)})


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError, match=r"unknown MAEConfig key 'mask_ration'.*'mask_ratio'"):
        MAEConfig.from_dict({"mask_ration": 0.5})
    with pytest.raises(ConfigError, match=r"'encoder_depth'.*Valid keys"):
        MAEConfig.from_dict({"encoder_depth": 3})


def test_unknown_preset_suggests_closest():
    with pytest.raises(ConfigError, match="Did you mean 'micro'"):
        MAEConfig.preset("mikro")


@pytest.mark.parametrize("key,value", [("patch_size", 4.0), ("patch_size", True),
                                       ("norm_pix_loss", 1), ("mask_ratio", "0.75"),
                                       ("mask_sampling", 3)])
def test_wrong_types_rejected(key, value):
    with pytest.raises(ConfigError, match=f"{key}.*must be of type"):
        MAEConfig.from_dict({key: value})


def test_image_not_divisible_by_patch():
    with pytest.raises(ConfigError, match=r"img_size 32 is not divisible by patch_size 5.*choose"):
        MAEConfig.from_dict({"img_size": 32, "patch_size": 5})


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5])
def test_mask_ratio_out_of_range(ratio):
    with pytest.raises(ConfigError, match=r"mask_ratio must be in \[0, 1\)"):
        MAEConfig.from_dict({"mask_ratio": ratio})


def test_mask_ratio_leaving_no_visible_patch():
    # 4 patches, ratio 0.8 -> int(4 * 0.2) = 0 visible.
    with pytest.raises(ConfigError, match=r"leaves no visible patch out of 4.*at most 0.75"):
        MAEConfig.from_dict({"img_size": 32, "patch_size": 16, "mask_ratio": 0.8})


@pytest.mark.parametrize("part", ["encoder", "decoder"])
def test_width_not_divisible_by_heads(part):
    with pytest.raises(ConfigError, match=rf"{part}_dim 100 is not divisible by {part}_heads 8.*"
                                          rf"set {part}_heads to a divisor"):
        MAEConfig.from_dict({f"{part}_dim": 100, f"{part}_heads": 8})


def test_width_must_suit_sincos():
    with pytest.raises(ConfigError, match="multiple of 4"):
        MAEConfig.from_dict({"encoder_dim": 66, "encoder_heads": 6})


def test_nonpositive_values():
    with pytest.raises(ConfigError, match="encoder_layers must be a positive integer"):
        MAEConfig.from_dict({"encoder_layers": 0})


def test_grid_sampling_needs_matching_ratio():
    MAEConfig.preset("micro", mask_sampling="grid", mask_ratio=0.75)
    with pytest.raises(ConfigError, match=r"grid mask sampling.*Valid ratios here: 0.75"):
        MAEConfig.preset("micro", mask_sampling="grid", mask_ratio=0.5)


def test_unknown_mask_sampling():
    with pytest.raises(ConfigError, match="Did you mean 'block'"):
        MAEConfig.from_dict({"mask_sampling": "blocks"})


def test_from_dict_rejects_non_mapping():
    with pytest.raises(ConfigError, match="must be built from a dict"):
        MAEConfig.from_dict([("patch_size", 16)])


def test_all_presets_build():
    for name in PRESETS:
        assert MAEConfig.preset(name).num_visible >= 1


# The paper's encoders: ViT-B/16 86M, ViT-L/16 304M, ViT-H/14 632M parameters.
@pytest.mark.parametrize("name,millions", [("base", 86), ("large", 304), ("huge", 632)])
def test_encoder_parameter_counts_match_paper(name, millions):
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = MAE(MAEConfig.preset(name))
    count = sum(p.numel() for p in model.encoder.parameters())
    assert abs(count / 1e6 - millions) / millions < 0.01, count
    # The paper's default decoder: 8 blocks of 512-d.
    assert (model.config.decoder_layers, model.config.decoder_dim) == (8, 512)
