"""Per-sample masking by sorting noise (the paper, section 3, "Masking").

Mask convention, used everywhere in `mae`: ``mask`` is a float tensor of shape (B, L) where
**1 means hidden** (masked: the encoder does not see it, the loss is computed on it) and 0 means
visible. This is the reference implementation's convention.

Every sampling strategy is expressed as *noise*: a (B, L) tensor whose K smallest entries per row
are the visible patches. Random masking draws uniform noise; block and grid sampling (Table 1f)
build noise whose K smallest entries lie where they want the visible patches. One argsort then
serves all three, and passing the same ``noise`` reproduces a mask exactly.
"""

from __future__ import annotations

import math
import random
from typing import NamedTuple

import torch

from .config import MASK_SAMPLINGS, check_mask_ratio, grid_step, num_visible, unknown_key_error


class Masking(NamedTuple):
    visible: torch.Tensor  # (B, K, D) the kept tokens, in shuffled order
    mask: torch.Tensor  # (B, L) 1 = hidden, 0 = visible, in the original patch order
    ids_restore: torch.Tensor  # (B, L) undoes the shuffle: gather(shuffled, ids_restore)
    ids_keep: torch.Tensor  # (B, K) original indices of the visible tokens


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The indexed rows of each sample: (B, N, D) and a (B, M) index -> (B, M, D)."""
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def random_noise(
    batch: int, num_patches: int, device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Uniform noise in [0, 1): random masking. Returns (B, L) float32."""
    if generator is None:  # no generator argument: torch.compile traces this with a dynamic batch
        return torch.rand(batch, num_patches, device=device)
    noise = torch.rand(batch, num_patches, generator=generator, device=generator.device)
    return noise.to(device) if device is not None else noise


def grid_noise(
    batch: int, grid_size: int, mask_ratio: float, device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Noise for grid sampling: keep one patch of every s x s cell, at a random offset per image.

    With mask_ratio 0.75, s = 2: the paper's "regular grid" that keeps one patch in four.
    Returns (B, L) with visible patches in [0, 1) and hidden ones in [1, 2).
    """
    s = grid_step(mask_ratio, grid_size)
    offsets = torch.randint(0, s, (batch, 2, 1, 1), generator=generator)  # (B, 2, 1, 1)
    rows = torch.arange(grid_size).view(1, grid_size, 1)  # (1, h, 1)
    cols = torch.arange(grid_size).view(1, 1, grid_size)  # (1, 1, w)
    visible = (rows % s == offsets[:, 0]) & (cols % s == offsets[:, 1])  # (B, h, w)
    hidden = (~visible).flatten(1).float()  # (B, L)
    noise = hidden + torch.rand(hidden.shape, generator=generator)
    return noise.to(device) if device is not None else noise


def block_noise(
    batch: int, grid_size: int, mask_ratio: float, device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Noise for block-wise masking (BEiT-style rectangles, Table 1f), exactly L - K hidden.

    Rectangles of random area and aspect ratio (log-uniform in [0.3, 1/0.3]) are hidden until no
    rectangle fits the remaining budget; the last few patches are then taken next to hidden ones,
    so every image hides exactly L - K patches and batches stay rectangular.
    Returns (B, L) with visible patches in [0, 1) and hidden ones in [1, 2).
    """
    L = grid_size * grid_size
    target = L - num_visible(L, mask_ratio)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    rng = random.Random(seed)
    # BEiT uses at least 16 patches per block on a 14x14 grid; scale that to this grid.
    min_area = max(1, round(16 * L / 196))
    hidden = torch.zeros(batch, grid_size, grid_size)
    for b in range(batch):
        hidden[b] = _one_block_mask(grid_size, target, min_area, rng)
    noise = hidden.flatten(1) + torch.rand(batch, L, generator=generator)  # (B, L)
    return noise.to(device) if device is not None else noise


def _one_block_mask(side: int, target: int, min_area: int, rng: random.Random) -> torch.Tensor:
    grid = [[False] * side for _ in range(side)]
    count, failures = 0, 0
    log_aspect = (math.log(0.3), math.log(1 / 0.3))
    while count < target and failures < 10:
        remaining = target - count
        area = rng.uniform(min(min_area, remaining), remaining)
        aspect = math.exp(rng.uniform(*log_aspect))
        h = int(round(math.sqrt(area * aspect)))
        w = int(round(math.sqrt(area / aspect)))
        if not (1 <= h <= side and 1 <= w <= side):
            failures += 1
            continue
        top, left = rng.randint(0, side - h), rng.randint(0, side - w)
        cells = [(i, j) for i in range(top, top + h) for j in range(left, left + w) if not grid[i][j]]
        if 0 < len(cells) <= remaining:
            for i, j in cells:
                grid[i][j] = True
            count += len(cells)
            failures = 0
        else:
            failures += 1
    while count < target:  # top up with neighbours of hidden patches, then anywhere
        free = [(i, j) for i in range(side) for j in range(side) if not grid[i][j]]
        near = [(i, j) for i, j in free if any(
            0 <= i + di < side and 0 <= j + dj < side and grid[i + di][j + dj]
            for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)))]
        i, j = rng.choice(near or free)
        grid[i][j] = True
        count += 1
    return torch.tensor(grid, dtype=torch.float32)


def sample_noise(
    sampling: str, batch: int, grid_size: int, mask_ratio: float,
    device: torch.device | str | None = None, generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Noise for one of the mask samplings in `MASK_SAMPLINGS` ("random", "block", "grid")."""
    if sampling == "random":
        return random_noise(batch, grid_size * grid_size, device, generator)
    if sampling == "block":
        return block_noise(batch, grid_size, mask_ratio, device, generator)
    if sampling == "grid":
        return grid_noise(batch, grid_size, mask_ratio, device, generator)
    raise unknown_key_error(sampling, list(MASK_SAMPLINGS), "mask_sampling")


def random_masking(
    x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Masking:
    """Keep K = int(L * (1 - mask_ratio)) tokens per sample: those with the smallest noise.

    Args:
        x: (B, L, D) tokens.
        mask_ratio: fraction hidden, in [0, 1).
        noise: optional (B, L); defaults to uniform noise (random masking). Pass the same noise
            to reproduce a mask, or noise from `sample_noise` for block / grid sampling.
        generator: optional torch.Generator for the default noise.

    Returns:
        `Masking(visible (B, K, D), mask (B, L), ids_restore (B, L), ids_keep (B, K))`.
    """
    B, L, _ = x.shape
    check_mask_ratio(mask_ratio, L)
    K = num_visible(L, mask_ratio)
    if noise is None:
        noise = random_noise(B, L, x.device, generator)
    elif noise.shape != (B, L):
        raise ValueError(f"noise must have shape (B, L) = {(B, L)}, got {tuple(noise.shape)}.")
    noise = noise.to(x.device)
    ids_shuffle = torch.argsort(noise, dim=1)  # (B, L) ascending: the first K are kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)  # (B, L)
    ids_keep = ids_shuffle[:, :K]  # (B, K)
    visible = gather_tokens(x, ids_keep)  # (B, K, D)
    mask = torch.ones(B, L, device=x.device)  # float32 whatever the activations: exact counts
    mask[:, :K] = 0  # (B, L) in shuffled order
    mask = torch.gather(mask, 1, ids_restore)  # (B, L) in original order
    return Masking(visible, mask, ids_restore, ids_keep)
