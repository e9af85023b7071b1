"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)`` only.

A checkpoint is a dict of tensors and plain Python values (numbers, strings, lists, dicts): the
model and optimizer states, the step, RNG states, and every config as a plain dict, so that a
checkpoint is never trusted by its file name alone. Loading one built for another config fails
with the differing keys named.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .config import ConfigError, MAEError
from .files import atomic_write, write_text_atomic

FORMAT_VERSION = 1
CHECKPOINT = "checkpoint.pt"  # the checkpoint of a run folder


class CheckpointError(MAEError, RuntimeError):
    """A checkpoint cannot be used; the message says why and what to do."""


def save_checkpoint(path: str | os.PathLike, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically (`mae.files.atomic_write`): a crash or a full
    disk mid-write leaves the previous checkpoint intact and no temporary file."""
    with atomic_write(path) as f:
        torch.save({**payload, "format_version": FORMAT_VERSION}, f)
    return Path(path)


def run_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint a path names: a run folder's ``checkpoint.pt``, or the file itself."""
    path = Path(path)
    return path / CHECKPOINT if path.is_dir() else path


def refuse_existing_run(out: str | os.PathLike, resume: bool, overwrite: bool) -> None:
    """A folder that holds a run (its checkpoint) is written into only to resume or replace it."""
    if (Path(out) / CHECKPOINT).is_file() and not (resume or overwrite):
        raise ConfigError(f"{out} already holds a run ({CHECKPOINT}): pass --resume to continue "
                          f"it, --overwrite to replace it, or choose another --out.")


def load_checkpoint(
    path: str | os.PathLike, expected: Mapping[str, Mapping[str, Any]] | None = None,
    map_location: str | torch.device = "cpu",
    defaults: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``.

    Args:
        path: the file.
        expected: optional ``{"model": config_dict, ...}``; each named section must equal the
            checkpoint's, or a `CheckpointError` names the differing keys.
        defaults: optional ``{"model": defaults_dict, ...}``: values for keys a section of an
            older checkpoint lacks (options added since, made with their defaults).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: check the path (a run folder "
                              f"or the {CHECKPOINT} in it).")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04":  # torch.save writes a zip archive; a damaged one still starts so
        raise CheckpointError(f"{path} is not a checkpoint: torch.save writes a zip archive and "
                              f"this file is none (a text file, or another format?). Pass the "
                              f"{CHECKPOINT} that pretrain wrote, or its run folder.")
    if str(map_location).startswith("cuda") and not torch.cuda.is_available():
        raise CheckpointError(f"cannot load {path} onto {map_location}: CUDA is not available on "
                              f"this host; load it with map_location='cpu'.")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"checkpoint {path} contains pickled Python objects that weights_only loading refuses "
            f"({str(e).splitlines()[0]}). Only tensors and plain values are trusted; re-save it "
            f"from the state dicts, or delete it."
        ) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupted ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}). Restore it from a copy, or delete it "
            f"and train again (pretrain --overwrite)."
        ) from e
    if not isinstance(ckpt, dict) or "format_version" not in ckpt:
        raise CheckpointError(f"{path} is not an mae checkpoint (no format_version); load plain "
                              f"state dicts with mae.convert.load_weights instead.")
    if ckpt["format_version"] > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {ckpt['format_version']}, newer than this "
                              f"mae ({FORMAT_VERSION}): upgrade mae.")
    if isinstance(ckpt.get("model"), Mapping):
        check_finite(ckpt["model"], str(path))
    for section, want in (expected or {}).items():
        check_config(ckpt.get("config", {}).get(section, {}), want, f"{path} ({section} config)",
                     (defaults or {}).get(section))
    return ckpt


def check_finite(state_dict: Mapping[str, Any], where: str) -> None:
    """Raise `CheckpointError` naming the first floating-point tensor with a NaN or an infinity:
    such weights would give chance-level features and pictures without a word."""
    for name, tensor in state_dict.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                raise CheckpointError(
                    f"{where}: tensor {name} holds {bad} NaN or infinite value(s) of "
                    f"{tensor.numel()}; the weights are unusable. Retrain, or use a checkpoint "
                    f"written before training diverged.")


def check_config(found: Mapping[str, Any], want: Mapping[str, Any], where: str,
                 defaults: Mapping[str, Any] | None = None) -> None:
    """Raise `CheckpointError` naming every key whose value differs. A key missing from
    ``found`` takes its value from ``defaults`` when given (a checkpoint written before an option
    existed was made with that option's default)."""
    found = {**(defaults or {}), **found}
    keys = sorted(set(found) | set(want))
    diffs = [f"{k}: checkpoint {found.get(k, '<absent>')!r} vs requested {want.get(k, '<absent>')!r}"
             for k in keys if found.get(k, "<absent>") != want.get(k, "<absent>")]
    if diffs:
        raise CheckpointError(
            f"{where} was made with another config; differing keys: {'; '.join(diffs)}. Use the "
            f"checkpoint's config, or start a new run in another output folder."
        )


def load_pretrained(path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """The MAE a pre-training run saved, and its configs: ``(model, {"model": ..., "train":
    ...})``. ``path`` is a ``checkpoint.pt`` or the run folder holding one. The model is in eval
    mode, ready to use; call ``model.train()`` to train it further."""
    from .model import MAE

    path = run_checkpoint(path)
    ckpt = load_checkpoint(path, map_location=map_location)
    if "model" not in ckpt or "model" not in ckpt.get("config", {}):
        raise CheckpointError(f"{path} holds no pre-trained MAE (no model weights or config).")
    model = MAE(ckpt["config"]["model"])
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt["config"]


def write_history(out_dir: Path, history: list[dict[str, float]]) -> None:
    """history.csv and history.json, each written atomically."""
    if not history:
        return
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    write_text_atomic(out_dir / "history.csv", buf.getvalue())
    write_text_atomic(out_dir / "history.json", json.dumps(history))
