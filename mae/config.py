"""Model configuration: one frozen dataclass, built and validated through `from_dict`.

Every entry point (Python API, CLI, papermill parameters, notebooks) builds its config with
`MAEConfig.from_dict`, so an unknown key or a bad value fails the same way everywhere, with a
message that says how to fix it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

MASK_SAMPLINGS = ("random", "block", "grid")


class MAEError(Exception):
    """The base of every error this package raises on purpose: its message (one line) says what
    was wrong and how to fix it, and `mae.cli.main` prints it as ``error: ...`` (exit status 2)."""


class ConfigError(MAEError, ValueError):
    """A configuration key or value is invalid; the message says how to fix it."""


def did_you_mean(key: str, valid: list[str]) -> str:
    """`` Did you mean 'x'?`` with the valid name nearest ``key``; empty when none is near."""
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


def unknown_key_error(key: str, valid: list[str], what: str) -> ConfigError:
    """Build the error for an unknown key, suggesting the closest valid one."""
    return ConfigError(f"unknown {what} key {key!r}.{did_you_mean(key, valid)} Valid keys: "
                       f"{', '.join(sorted(valid))}.")


def check_types(cls: type, values: Mapping[str, Any], what: str) -> None:
    """Reject unknown keys and values whose type does not match the dataclass field.

    bool is not accepted where an int or float is expected (``True`` is an int in Python, but a
    config that says ``patch_size: true`` is a mistake); ints are accepted for floats.
    """
    hints = {f.name: f.type for f in fields(cls)}
    for key, value in values.items():
        if key not in hints:
            raise unknown_key_error(key, list(hints), what)
        expected = str(hints[key])
        if expected == "bool":
            ok = isinstance(value, bool)
        elif expected == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif expected == "float":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif expected == "str":
            ok = isinstance(value, str)
        else:  # pragma: no cover - only the four types above are used
            ok = True
        if not ok:
            raise ConfigError(
                f"{what} key {key!r} must be of type {expected}, got {type(value).__name__} "
                f"{value!r}."
            )


def plain(value: Any) -> Any:
    """A numpy scalar (``np.int64(64)``, ``np.float32(0.5)``, ``np.bool_(True)``, a 0-d array) as
    the Python value it holds (a float32 by its shortest digits: 0.001, not 0.0010000000474975),
    so that configs built from numpy values hold JSON types; any other value as it is."""
    if type(value).__module__ != "numpy" or getattr(value, "shape", None) != ():
        return value
    item = value.item()
    return float(str(value)) if isinstance(item, float) else item


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


class ConfigBase:
    """from_dict / to_dict / replace for the frozen config dataclasses below. However a config is
    built (``from_dict``, or the class called directly), numpy scalars become Python values and
    the types are checked; then ``validate`` checks the values."""

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, plain(getattr(self, f.name)))
        check_types(type(self), self.__dict__, type(self).__name__)
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first value out of its range (in the subclasses)."""

    @classmethod
    def from_dict(cls, values):
        """Build a config from a mapping; unknown keys and wrong types are rejected by name."""
        if isinstance(values, cls):
            return values
        if not isinstance(values, Mapping):
            raise ConfigError(
                f"a {cls.__name__} must be built from a dict, got {type(values).__name__}."
            )
        values = {key: plain(value) for key, value in values.items()}
        check_types(cls, values, cls.__name__)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any):
        """A copy with some fields changed, validated like `from_dict`."""
        return self.from_dict({**self.to_dict(), **changes})


@dataclass(frozen=True)
class MAEConfig(ConfigBase):
    """Architecture and masking of a Masked Autoencoder.

    Defaults are the paper's ViT-B/16 encoder with its default 8-block, 512-d decoder
    (Table 1 defaults), at 224 px with 75% random masking.
    """

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    encoder_dim: int = 768
    encoder_layers: int = 12
    encoder_heads: int = 12
    decoder_dim: int = 512
    decoder_layers: int = 8
    decoder_heads: int = 16
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    layer_norm_eps: float = 1e-6
    mask_ratio: float = 0.75
    mask_sampling: str = "random"
    norm_pix_loss: bool = False
    # Table 1c / Table 2: run the encoder on all patches, masked ones replaced by a mask token.
    encoder_mask_tokens: bool = False
    # A learned CLS token first in the encoder's (and decoder's) sequence, as in the paper and
    # its code; False: patch tokens only (vit-pytorch's MAE; probe with features="mean").
    cls_token: bool = True

    # ----- construction -------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> MAEConfig:
        """A named preset (see `PRESETS`) with optional overrides."""
        if name not in PRESETS:
            raise unknown_key_error(name, list(PRESETS), "preset")
        return cls.from_dict({**PRESETS[name], **overrides})

    # ----- derived values -----------------------------------------------------------------
    @property
    def grid_size(self) -> int:
        """Patches per side, ``img_size // patch_size``."""
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """L, the number of patches per image."""
        return self.grid_size**2

    @property
    def patch_dim(self) -> int:
        """P = p * p * C, the pixel values per patch (the decoder's output width)."""
        return self.patch_size**2 * self.in_chans

    @property
    def num_visible(self) -> int:
        """K, the patches the encoder sees at the default mask ratio."""
        return num_visible(self.num_patches, self.mask_ratio)

    @property
    def num_prefix(self) -> int:
        """Tokens before the patch tokens in every sequence: 1 with a CLS token, else 0."""
        return int(self.cls_token)

    @property
    def encoder_mlp_dim(self) -> int:
        return int(self.encoder_dim * self.mlp_ratio)

    @property
    def decoder_mlp_dim(self) -> int:
        return int(self.decoder_dim * self.mlp_ratio)

    # ----- validation ---------------------------------------------------------------------
    def validate(self) -> None:
        for name in ("img_size", "patch_size", "in_chans", "encoder_dim", "encoder_layers",
                     "encoder_heads", "decoder_dim", "decoder_layers", "decoder_heads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)}.")
        if self.img_size % self.patch_size:
            sizes = [d for d in divisors(self.img_size) if d > 1]
            raise ConfigError(
                f"img_size {self.img_size} is not divisible by patch_size {self.patch_size}: "
                f"choose a patch_size that divides it (e.g. one of {sizes[:8]}) or an img_size "
                f"that is a multiple of {self.patch_size} (e.g. "
                f"{self.img_size // self.patch_size * self.patch_size or self.patch_size})."
            )
        for part in ("encoder", "decoder"):
            dim, heads = getattr(self, f"{part}_dim"), getattr(self, f"{part}_heads")
            if dim % heads:
                raise ConfigError(
                    f"{part}_dim {dim} is not divisible by {part}_heads {heads}: set {part}_heads "
                    f"to a divisor of {dim} (e.g. one of {divisors(dim)[:10]})."
                )
            if dim % 4:
                raise ConfigError(
                    f"{part}_dim {dim} must be a multiple of 4 for the 2-D sin-cos positional "
                    f"embedding (two axes, sin and cos): use e.g. {dim // 4 * 4 + 4}."
                )
        for name in ("encoder_dim", "decoder_dim"):  # beyond any ViT anyone trains (ViT-22B: 6144)
            if getattr(self, name) > 65536:
                raise ConfigError(f"{name} {getattr(self, name)} is beyond any ViT (ViT-22B is "
                                  f"6144 wide): check the value.")
        if not (math.isfinite(self.mlp_ratio) and 0 < self.mlp_ratio <= 64):
            raise ConfigError(f"mlp_ratio must be a finite number in (0, 64], got "
                              f"{self.mlp_ratio} (4 in ViT).")
        for part in ("encoder", "decoder"):
            if getattr(self, f"{part}_mlp_dim") < 1:
                raise ConfigError(f"mlp_ratio {self.mlp_ratio} gives the {part} MLP no hidden "
                                  f"unit ({part}_dim {getattr(self, f'{part}_dim')} x "
                                  f"{self.mlp_ratio} < 1): use a larger mlp_ratio (4 in ViT).")
        if not (math.isfinite(self.layer_norm_eps) and 0 < self.layer_norm_eps < 1):
            raise ConfigError(f"layer_norm_eps must be a finite number in (0, 1), got "
                              f"{self.layer_norm_eps} (1e-6 in the paper).")
        check_mask_ratio(self.mask_ratio, self.num_patches)
        if self.mask_sampling not in MASK_SAMPLINGS:
            raise unknown_key_error(self.mask_sampling, list(MASK_SAMPLINGS), "mask_sampling")
        if self.mask_sampling == "grid":
            grid_step(self.mask_ratio, self.grid_size)


def num_visible(num_patches: int, mask_ratio: float) -> int:
    """K = int(L * (1 - mask_ratio)), the reference implementation's rounding."""
    return int(num_patches * (1 - mask_ratio))


def check_mask_ratio(mask_ratio: float, num_patches: int) -> None:
    """Raise ConfigError unless the ratio is in [0, 1) and leaves at least one visible patch."""
    if not (isinstance(mask_ratio, (int, float)) and 0 <= mask_ratio < 1):
        raise ConfigError(
            f"mask_ratio must be in [0, 1) (the fraction of patches hidden), got {mask_ratio!r}; "
            f"the paper's default is 0.75."
        )
    if num_visible(num_patches, mask_ratio) < 1:
        largest = 1 - 1 / num_patches
        raise ConfigError(
            f"mask_ratio {mask_ratio} leaves no visible patch out of {num_patches}: use a ratio of "
            f"at most {largest:.4f}, or smaller patches."
        )


def check_hides_a_patch(mask_ratio: float, num_patches: int) -> None:
    """Raise ConfigError if the ratio hides nothing: then there is nothing to reconstruct."""
    if num_visible(num_patches, mask_ratio) >= num_patches:
        raise ConfigError(
            f"mask_ratio {mask_ratio} hides no patch, so there is nothing to reconstruct and the "
            f"loss is undefined: use a ratio in (0, 1) (the paper's default is 0.75), or "
            f"model.features(images) for the encoder's features of unmasked images.")


def grid_step(mask_ratio: float, grid_size: int) -> int:
    """The stride s of grid sampling, which keeps one patch in every s x s cell (Table 1f).

    The ratio must be 1 - 1/s**2 (0.75 for s = 2) and s must divide the patch grid, so every image
    keeps exactly the same number of patches.
    """
    step = round(1 / math.sqrt(1 - mask_ratio))
    if step < 2 or abs(1 - 1 / step**2 - mask_ratio) > 1e-9 or grid_size % step:
        options = [f"{1 - 1 / s**2:g}" for s in range(2, grid_size + 1) if grid_size % s == 0]
        raise ConfigError(
            f"grid mask sampling keeps one patch of every s x s block, so mask_ratio must be "
            f"1 - 1/s^2 with s dividing the {grid_size}x{grid_size} patch grid; got {mask_ratio}. "
            f"Valid ratios here: {', '.join(options) or 'none'}."
        )
    return step


# Named presets. micro / tiny are for 32x32 CIFAR images; base / large / huge are the paper's
# ViT-B/16, ViT-L/16 and ViT-H/14 encoders with the default 8-block, 512-d decoder.
PRESETS: dict[str, dict[str, Any]] = {
    "micro": dict(img_size=32, patch_size=4, encoder_dim=128, encoder_layers=6, encoder_heads=4,
                  decoder_dim=64, decoder_layers=2, decoder_heads=2, norm_pix_loss=True),
    "tiny": dict(img_size=32, patch_size=2, encoder_dim=192, encoder_layers=12, encoder_heads=3,
                 decoder_dim=128, decoder_layers=4, decoder_heads=4, norm_pix_loss=True),
    "base": dict(img_size=224, patch_size=16, encoder_dim=768, encoder_layers=12,
                 encoder_heads=12, decoder_dim=512, decoder_layers=8, decoder_heads=16),
    "large": dict(img_size=224, patch_size=16, encoder_dim=1024, encoder_layers=24,
                  encoder_heads=16, decoder_dim=512, decoder_layers=8, decoder_heads=16),
    "huge": dict(img_size=224, patch_size=14, encoder_dim=1280, encoder_layers=32,
                 encoder_heads=16, decoder_dim=512, decoder_layers=8, decoder_heads=16),
}
