"""What a tier (``ablations/tiers.yaml``) and a sweep (``ablations/<name>.yaml``) may hold.

Every key is checked: a misspelt one (``trian:``, ``papr:``) is refused by name with the nearest
known key, as `mae.config.MAEConfig` does, instead of being ignored while the points run with
defaults. The sections that are configs (a tier's ``model:``, ``train:``, ``eval:``, a point's
``set:``) are checked field by field where they are resolved (:mod:`mae.ablate`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import ConfigError, unknown_key_error

TIER_KEYS = ("description", "preset", "model", "train", "eval", "finetune", "seeds",
             "default_seeds", "slurm", "datasets", "eval_train_subset", "eval_test_subset",
             "nproc")
TIER_REQUIRED = ("preset", "seeds", "datasets")
SWEEP_KEYS = ("name", "title", "paper_source", "parameter", "values", "paper", "points", "tiers",
              "pretrain")
POINT_KEYS = ("label", "set", "paper", "value")
PAPER_KEYS = ("lin", "ft", "hours")  # the paper's linear probe, fine-tuning, wall-clock hours


def check_keys(values: Any, known: tuple[str, ...], what: str) -> None:
    if not isinstance(values, dict):
        raise ConfigError(f"{what} must be a mapping, got {values!r}.")
    for key in values:
        if key not in known:
            raise unknown_key_error(str(key), list(known), what)


def check_tier(path: Path, name: str, tier: Any) -> None:
    """One tier of ``path``: a mapping of known keys, with a preset, seeds and datasets."""
    if not isinstance(tier, dict):
        raise ConfigError(f"{path} tier {name!r} must be a mapping (preset:, seeds:, datasets:, "
                          f"...), not a {type(tier).__name__}.")
    check_keys(tier, TIER_KEYS, f"{path.name} tier {name!r}")
    missing = [k for k in TIER_REQUIRED if k not in tier]
    if missing:
        raise ConfigError(f"{path} tier {name!r} lacks {', '.join(missing)}: a tier needs "
                          f"{', '.join(TIER_REQUIRED)}; see the smoke tier.")


def check_sweep(path: Path, spec: Any, swept: tuple[str, ...]) -> None:
    """A sweep file: known keys, title: and tiers:, and its points (or parameter: and values:),
    each point changing only the ``swept`` model fields; the paper's numbers by known names."""
    if not isinstance(spec, dict):
        raise ConfigError(f"{path} must be a mapping (title:, tiers:, and points: or parameter: "
                          f"with values:), not a {type(spec).__name__}.")
    check_keys(spec, SWEEP_KEYS, path.name)
    shorthand = "parameter" in spec and isinstance(spec.get("values"), list)
    missing = [k for k in ("title", "tiers") if k not in spec]
    if missing or not (shorthand or isinstance(spec.get("points"), list)):
        raise ConfigError(f"{path} lacks {', '.join(missing) or 'its points'}: a sweep needs "
                          f"title:, tiers: and either points: (a list) or parameter: with "
                          f"values: (a list); see ablations/mask_ratio.yaml.")
    if "points" not in spec:  # shorthand: paper: holds the paper's numbers by value
        paper = spec.get("paper") or {}
        for value, numbers in paper.items():
            if value not in spec["values"]:
                raise ConfigError(f"{path} paper: has {value!r}, which is not one of values: "
                                  f"{spec['values']}; add it to values: or drop it.")
            check_keys(numbers or {}, PAPER_KEYS, f"{path.name} paper: {value!r}")
        return
    for i, point in enumerate(spec["points"]):
        if not isinstance(point, dict) or "label" not in point or not isinstance(
                point.get("set"), dict):
            raise ConfigError(f"{path} point {i} must be a mapping with label: and set: (the "
                              f"model fields it changes), got {point!r}.")
        check_keys(point, POINT_KEYS, f"{path.name} point {i}")
        check_keys(point.get("paper") or {}, PAPER_KEYS, f"{path.name} point {i} paper:")
        for key in point["set"]:
            if key not in swept:
                raise unknown_key_error(key, list(swept), f"swept field in {path.name} point {i}")
