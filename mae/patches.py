"""Images to patches and back.

A patch vector lists its pixels row by row, each pixel's channels last: index
``(i * p + j) * C + c`` holds channel ``c`` of pixel ``(i, j)``. This is the order of the
reference implementation (facebookresearch/mae), so converted decoders predict the same layout.
"""

from __future__ import annotations

import torch


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut images into non-overlapping square patches.

    Args:
        images: (B, C, H, W), with H and W multiples of ``patch_size``.
        patch_size: p, the side of a patch in pixels.

    Returns:
        (B, L, P) with L = (H/p) * (W/p) patches in row-major grid order and P = p * p * C.
    """
    if images.ndim != 4:
        raise ValueError(f"patchify expects images of shape (B, C, H, W), got {tuple(images.shape)}.")
    B, C, H, W = images.shape
    p = patch_size
    if H % p or W % p:
        raise ValueError(
            f"image size {H}x{W} is not divisible by patch_size {p}: resize or crop the images to "
            f"a multiple of {p}."
        )
    h, w = H // p, W // p
    x = images.reshape(B, C, h, p, w, p)  # (B, C, h, p, w, p)
    x = x.permute(0, 2, 4, 3, 5, 1)  # (B, h, w, p, p, C)
    return x.reshape(B, h * w, p * p * C)  # (B, L, P)


def unpatchify(
    patches: torch.Tensor,
    patch_size: int,
    grid: tuple[int, int] | None = None,
    channels: int | None = None,
) -> torch.Tensor:
    """Inverse of `patchify`.

    Args:
        patches: (B, L, P) with P = p * p * C.
        patch_size: p.
        grid: (h, w) patches per column and row; default square, h = w = sqrt(L).
        channels: C; default P / p**2.

    Returns:
        (B, C, h * p, w * p).
    """
    if patches.ndim != 3:
        raise ValueError(f"unpatchify expects patches of shape (B, L, P), got {tuple(patches.shape)}.")
    B, L, P = patches.shape
    p = patch_size
    C = channels if channels is not None else P // (p * p)
    if C * p * p != P:
        raise ValueError(f"patch width {P} is not patch_size**2 * channels = {p}**2 * {C}.")
    if grid is None:
        side = int(round(L**0.5))
        if side * side != L:
            raise ValueError(f"{L} patches do not form a square grid: pass grid=(h, w).")
        grid = (side, side)
    h, w = grid
    if h * w != L:
        raise ValueError(f"grid {h}x{w} holds {h * w} patches, but got {L}.")
    x = patches.reshape(B, h, w, p, p, C)  # (B, h, w, p, p, C)
    x = x.permute(0, 5, 1, 3, 2, 4)  # (B, C, h, p, w, p)
    return x.reshape(B, C, h * p, w * p)  # (B, C, H, W)
