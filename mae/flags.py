"""The command line's flags and the configs: one flag per config field, the evaluation fields
each command uses (it refuses the others' flags), ``--set key=value`` overrides, and the values
the flags gave."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from .config import ConfigError
from .recipe import EvalConfig


# The EvalConfig fields each evaluation command reads (a name, or a prefix ending in _): it
# offers no flag for the others, so that e.g. ``probe --ft-epochs 5`` is refused, not ignored.
EVAL_FIELDS = {"probe": ("features", "batch_size", "probe_", "seed"),
               "knn": ("features", "batch_size", "knn_"),
               "frozen": ("features", "batch_size", "probe_", "knn_", "seed"),
               "finetune": ("ft_", "seed")}


def eval_fields(command: str) -> list[str]:
    """The EvalConfig fields ``command`` uses: those of `EVAL_FIELDS`, and device and precision."""
    uses = (*EVAL_FIELDS[command], "device", "precision")
    return [f.name for f in dataclasses.fields(EvalConfig)
            if f.name in uses or any(u.endswith("_") and f.name.startswith(u) for u in uses)]


class OtherCommands(argparse.Action):
    """The flag of an EvalConfig field another command uses: refused, saying whose it is."""

    def __call__(self, parser, namespace, values, option_string=None):
        owners = [c for c in EVAL_FIELDS if self.dest in eval_fields(c)]
        parser.error(f"{option_string} is an option of {', '.join(owners)}; "
                     f"{parser.prog.split()[-1]} does not use it: drop it.")


def add_dataclass_flags(parser: argparse.ArgumentParser, cls: type, title: str,
                        only: list[str] | None = None) -> None:
    """One flag per field of ``cls``; with ``only``, the flags of the other fields are hidden
    and refused (`OtherCommands`)."""
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        if only is not None and f.name not in only:
            parser.add_argument(flag, dest=f.name, nargs="?", action=OtherCommands,
                                help=argparse.SUPPRESS)
            continue
        help_text = f"{f.metadata.get('help', '')} (default: {f.default!r})"
        if f.type == "bool":
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                               default=None, help=help_text)
        else:
            kind = {"int": int, "float": float, "str": str}[f.type]
            group.add_argument(flag, dest=f.name, type=kind, default=None, help=help_text)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["mask_ratio=0.5", "norm_pix_loss=false"]`` -> typed dict (YAML scalars)."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {item!r} (e.g. --set mask_ratio=0.5).")
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str):  # YAML 1.1 reads "1e-06" as a string
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        out[key.strip()] = parsed
    return out


def collect(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
            if getattr(args, f.name, None) is not None}
