"""Trained models a reader can load by name: ``model, configs = mae.pretrained.load("micro-cifar10")``.

Each is a small weights-only checkpoint trained in this repository with its own CLI (``python -m
mae pretrain``, then ``python -m mae export``); its record (command, commit, data fingerprint,
epochs, wall and CPU time) lies beside it in ``checkpoints/<name>.json``. In a checkout the file
is used where it lies; where `mae` is installed without one (pip, Colab) it is downloaded once from
the repository into ``$MAE_CACHE`` (default ``~/.cache/mae``). Either way its sha256 must equal the
one registered below, so a changed or truncated file is never loaded.
"""

from __future__ import annotations

import hashlib
import math
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoint import (
    CheckpointError, load_checkpoint, load_pretrained, run_checkpoint, save_checkpoint,
)
from .files import DiskFullError, atomic_write

BASE_URL = "https://github.com/mae-book/mae-book/raw/main/checkpoints/"
"""Where the files are downloaded from; ``$MAE_CHECKPOINT_URL`` replaces it (a mirror, a test)."""


@dataclass(frozen=True)
class Entry:
    name: str
    file: str
    sha256: str
    description: str


REGISTRY: dict[str, Entry] = {e.name: e for e in (
    Entry("micro-cifar10", "micro-cifar10.pt",
          "c1410c3b186c141e550c3dff34c367d6294db2f9cc8f87ab55176d68ffc7f8a2",
          "micro, 50 epochs of CIFAR-10, norm-pix target (chapters 6-7)"),
    Entry("micro-imagenette-pixels", "micro-imagenette-pixels.pt",
          "0b7c27b80a4de8643e702a15bfcc8d70c75e39eb56c59f03f7bc8fb0f54dccde",
          "micro at 64 px / patch 8, 80 epochs of Imagenette, pixel target (pictures: "
          "chapters 6 and 9)"),
)}


def names() -> list[str]:
    """The registered names."""
    return sorted(REGISTRY)


def lookup(name: str) -> Entry:
    if name not in REGISTRY:
        known = ", ".join(names()) or "none"
        raise CheckpointError(f"no trained model is named {name!r}; the names are: {known} (or "
                              f"pass the path of a checkpoint.pt or its run folder).")
    return REGISTRY[name]


def checkout_dir() -> Path:
    """``checkpoints/`` of the checkout this package was imported from (it may not exist)."""
    return Path(__file__).resolve().parents[1] / "checkpoints"


def cache_dir() -> Path:
    return Path(os.environ.get("MAE_CACHE") or Path.home() / ".cache" / "mae")


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def path(name: str, download: bool = True) -> Path:
    """The verified local file of a registered model: the checkout's, else the cached download,
    else (``download=True``) a fresh download into the cache."""
    entry = lookup(name)
    local = checkout_dir() / entry.file
    if local.is_file():
        found = sha256(local)
        if found != entry.sha256:
            raise CheckpointError(
                f"{local} has sha256 {found[:16]}..., not the registered {entry.sha256[:16]}...: "
                f"the file was changed. Restore it (git checkout -- {local.name}).")
        return local
    cached = cache_dir() / entry.file
    if cached.is_file():
        if sha256(cached) == entry.sha256:
            return cached
        cached.unlink()  # a stale or damaged download: fetch it again
    if not download:
        raise CheckpointError(f"{name} is neither in {local.parent} nor cached in "
                              f"{cached.parent}; allow the download or set MAE_CACHE.")
    return _download(entry, cached)


def _download(entry: Entry, target: Path) -> Path:
    from .files import check_writable

    base = os.environ.get("MAE_CHECKPOINT_URL") or BASE_URL
    if urllib.parse.urlparse(base).scheme not in ("http", "https", "file"):
        raise CheckpointError(f"MAE_CHECKPOINT_URL {base!r} is not a URL: set it to the http(s):// "
                              f"or file:// address of a folder holding {entry.file}, or unset it.")
    check_writable(target.parent, "download cache folder ($MAE_CACHE)")
    url = base.rstrip("/") + "/" + entry.file
    return download(url, target, entry.sha256, entry.name,
                    f"check the network or MAE_CHECKPOINT_URL, or copy {entry.file} into "
                    f"{target.parent}")


def download(url: str, target: Path, sha: str | None, what: str, fix: str) -> Path:
    """Fetch ``url`` into ``target`` through a temporary file (never half a file under the real
    name, `mae.files.atomic_write`); with ``sha``, a download whose sha256 differs is refused and
    not kept."""
    digest = hashlib.sha256()
    try:
        with atomic_write(target) as f, urllib.request.urlopen(url, timeout=60) as response:
            for block in iter(lambda: response.read(1 << 20), b""):
                f.write(block)
                digest.update(block)
            found = digest.hexdigest()
            if sha is not None and found != sha:
                raise CheckpointError(
                    f"the download of {what} from {url} has sha256 {found[:16]}..., not the "
                    f"registered {sha[:16]}...; it was not kept. Try again, or {fix}.")
    except DiskFullError:
        raise
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise CheckpointError(f"cannot download {what} from {url} ({reason}): {fix}.") from e
    return target


def load_official(source: str, preset: str = "large", **overrides: Any):
    """An MAE with the weights of an official facebookresearch/mae checkpoint: ``source`` is its
    URL (downloaded once into ``$MAE_CACHE``) or a local ``.pth`` file; ``preset`` and
    ``overrides`` must describe the checkpoint's model (e.g. ``norm_pix_loss=False`` for the
    "visualize" checkpoints). Returns the model in eval mode."""
    import torch

    from .config import MAEConfig
    from .convert import load_weights
    from .model import MAE

    model = MAE(MAEConfig.preset(preset, **overrides))  # a config error before any download
    local = Path(source)
    if "://" in source:
        local = cache_dir() / "official" / Path(urllib.parse.urlparse(source).path).name
        if not local.is_file():
            download(source, local, None, "the official checkpoint",
                     "check the URL and the network, or download it by hand and pass its path")
    if not local.is_file():
        raise CheckpointError(f"{local} does not exist: pass the .pth file you downloaded, or "
                              f"its URL.")
    try:
        state = torch.load(local, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated download, or not a torch file at all
        raise CheckpointError(f"{local} cannot be read as a torch checkpoint "
                              f"({type(e).__name__}); delete it and download it again.") from e
    load_weights(model, state, "official")
    return model.eval()


def resolve(source: str | os.PathLike) -> Path:
    """What ``--checkpoint`` names: an existing path as it is, else a registered model's file."""
    if Path(source).exists() or str(source) not in REGISTRY:
        return Path(source)
    return path(str(source))


def epoch_means(history: list[dict[str, float]]) -> list[dict[str, float]]:
    """The per-step loss history reduced to one mean per epoch (what a loss curve of a long run
    needs, a hundredth of the size)."""
    by_epoch: dict[int, list[float]] = {}
    for h in history:
        by_epoch.setdefault(math.ceil(h["epoch"] - 1e-9), []).append(h["loss"])
    return [{"epoch": e, "loss": sum(v) / len(v)} for e, v in sorted(by_epoch.items())]


def info(name: str, download: bool = True) -> dict[str, Any]:
    """How a registered model was made: its run's ``pretrain_metrics.json`` (command, commit,
    configs, data, wall and CPU time) and its per-epoch loss (``epoch_loss``)."""
    ckpt = load_checkpoint(path(name, download))
    return {**(ckpt.get("pretrain") or {}), "epoch_loss": ckpt.get("epoch_loss", [])}


def load(name: str, map_location: str = "cpu", download: bool = True):
    """``(model, configs)`` of a registered model, as `mae.checkpoint.load_pretrained` gives them
    for a run folder: the model in eval mode (``model.train()`` to train it further)."""
    return load_pretrained(path(name, download), map_location)


def export(run: str | os.PathLike, out: str | os.PathLike) -> dict[str, Any]:
    """Write the weights-only part of a pre-training run (model weights, configs, data fingerprint;
    no optimizer state, a third of the size) to ``out``, and return its record: the run's
    ``pretrain_metrics.json`` plus the file's size and sha256."""
    import json

    ckpt_path = run_checkpoint(run)
    ckpt = load_checkpoint(ckpt_path)
    if "optimizer" not in ckpt or "step" not in ckpt:
        raise CheckpointError(f"{ckpt_path} is not a pre-training checkpoint (no optimizer state "
                              f"or step): export the checkpoint.pt that pretrain wrote.")
    out = Path(out)
    if out.exists():
        raise CheckpointError(f"{out} exists: remove it first, or choose another --out.")
    metrics_file = ckpt_path.parent / "pretrain_metrics.json"
    pretrain = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
    save_checkpoint(out, {"model": ckpt["model"], "config": ckpt["config"],
                          "data": ckpt.get("data"), "step": ckpt["step"],
                          "pretrain": pretrain, "epoch_loss": epoch_means(ckpt["history"])})
    return {"file": out.name, "sha256": sha256(out), "bytes": out.stat().st_size,
            "step": ckpt["step"], "config": ckpt["config"], "data": ckpt.get("data"),
            "pretrain": pretrain}
