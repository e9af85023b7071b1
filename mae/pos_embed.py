"""Fixed 2-D sine-cosine positional embeddings (the paper, appendix A.1).

Half of the channels encode the patch's row, half its column; each half is the 1-D
Transformer encoding: sin and cos of the position at geometrically spaced frequencies.
"""

from __future__ import annotations

import torch


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """1-D sin-cos encoding. positions: (M,) -> (M, dim); dim must be even."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding width must be even, got {dim}.")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega  # (dim/2,)
    angles = positions.to(torch.float64).reshape(-1, 1) * omega.reshape(1, -1)  # (M, dim/2)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)  # (M, dim)


def sincos_2d(dim: int, grid_size: int, cls_token: bool = False) -> torch.Tensor:
    """2-D sin-cos table for a square grid of patches in row-major order.

    Returns (L, dim) float32, or (1 + L, dim) with a leading zero row for the CLS token.
    Computed in float64 and rounded once, like the reference (NumPy float64) table.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding width must be a multiple of 4, got {dim}.")
    coords = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")  # (h, w) each
    # The reference encodes the column index in the first half and the row in the second.
    table = torch.cat([sincos_1d(dim // 2, cols.flatten()), sincos_1d(dim // 2, rows.flatten())],
                      dim=1)  # (L, dim)
    if cls_token:
        table = torch.cat([torch.zeros(1, dim, dtype=torch.float64), table], dim=0)  # (1+L, dim)
    return table.float()
