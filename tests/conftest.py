"""Shared fixtures: small configs that run in milliseconds on a CPU."""

from __future__ import annotations

import pytest
import torch

from mae import MAEConfig

# Deterministic, and fair to a 2-core machine.
torch.set_num_threads(min(2, torch.get_num_threads()))

SMALL = dict(img_size=32, patch_size=4, encoder_dim=64, encoder_layers=2, encoder_heads=4,
             decoder_dim=32, decoder_layers=1, decoder_heads=4)


@pytest.fixture
def small_config() -> MAEConfig:
    return MAEConfig.from_dict(SMALL)
