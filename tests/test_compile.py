"""torch.compile of the model: batches of changing size, masks drawn inside the model or passed
in, the same numbers as eager. ``aot_eager`` traces what inductor traces (Dynamo and the autograd
graph) without generating kernels, so this runs in seconds; the GPU script compiles for real."""

from __future__ import annotations

import pytest
import torch

from conftest import SMALL
from mae import MAE


@pytest.mark.slow
def test_compiled_model_takes_changing_batch_sizes_and_matches_eager():
    torch.manual_seed(0)
    model = MAE(SMALL)
    compiled = torch.compile(model, backend="aot_eager")
    for batch in (2, 3, 5, 4):  # the second size makes Dynamo trace with a dynamic batch
        images = torch.randn(batch, 3, 32, 32)
        noise = torch.rand(batch, 64)
        want = model(images, noise=noise)
        got = compiled(images, noise=noise)
        torch.testing.assert_close(got.loss, want.loss)
        torch.testing.assert_close(got.pred, want.pred)
        drawn = compiled(images)  # masks drawn inside the compiled model
        assert drawn.mask.shape == (batch, 64) and drawn.mask.sum(1).eq(48).all()
        drawn.loss.backward()
