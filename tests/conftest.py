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


def cifar_available() -> bool:
    import os
    from pathlib import Path

    root = os.environ.get("MAE_DATA")
    return bool(root) and (Path(root) / "cifar-10-batches-py" / "data_batch_1").is_file()


needs_cifar = pytest.mark.skipif(not cifar_available(),
                                 reason="CIFAR-10 not found under $MAE_DATA (set MAE_DATA)")


@pytest.fixture(scope="session")
def cifar_train():
    from mae.data import load_dataset

    return load_dataset("cifar10", "train")


@pytest.fixture(scope="session")
def cifar_test():
    from mae.data import load_dataset

    return load_dataset("cifar10", "test")
