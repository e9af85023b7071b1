import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from conftest import SMALL
from mae import MAE, MAEConfig
from mae.flops import mae_flops
from mae.hidden import hidden_patch_loss


def measured(config: MAEConfig, shortcut: bool = False, batch: int = 16) -> float:
    """FLOPs per image of one forward pass (``shortcut``: training's, `hidden_patch_loss`),
    counted by torch."""
    model = MAE(config)
    images = torch.randn(batch, 3, config.img_size, config.img_size)
    # The math attention backend runs as matmuls that torch's counter sees (the fused CPU
    # kernel is not registered with it).
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        hidden_patch_loss(model, images) if shortcut else model(images)
    return counter.get_total_flops() / batch


def test_matches_torch_flop_counter():
    """torch's FLOP counter, run on the model, agrees with the formula: the forward pass with
    every prediction, and the training forward pass (hidden predictions only; the mask tokens'
    first projection is made once per batch, which the per-image formula leaves out)."""
    for overrides in ({}, {"encoder_mask_tokens": True}, {"mask_ratio": 0.5}, {"decoder_layers": 2},
                      {"decoder_layers": 2, "encoder_mask_tokens": True},
                      {"decoder_layers": 2, "cls_token": False}):
        config = MAEConfig.from_dict({**SMALL, **overrides})
        f = mae_flops(config)
        ours, theirs = f["total"], measured(config)
        assert abs(ours - theirs) / theirs < 0.02, (overrides, ours, theirs)
        ours, theirs = f["train_step"] / 3, measured(config, shortcut=True)
        assert abs(ours - theirs) / theirs < 0.02, (overrides, "train", ours, theirs)
        assert f["train_step"] < 3 * f["total"]


def test_mask_tokens_cost_about_three_times_for_vit_large():
    """The paper's Table 1c: about 3.3x the training FLOPs with mask tokens in the encoder."""
    large = MAEConfig.preset("large")
    ratio = mae_flops(large.replace(encoder_mask_tokens=True))["total"] / mae_flops(large)["total"]
    assert 3.0 < ratio < 3.6, ratio
    # The default 8 x 512 decoder: about 9% of ViT-L's FLOPs per token (section 3).
    f = mae_flops(large, mask_ratio=0.0)
    assert 0.07 < f["decoder"] / f["encoder"] < 0.11, f["decoder"] / f["encoder"]
