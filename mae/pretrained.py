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
import http.client
import math
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoint import (
    CHECKPOINT, CheckpointError, load_checkpoint, load_pretrained, run_checkpoint, save_checkpoint,
)
from .config import did_you_mean
from .files import DiskFullError, atomic_write, cache_dir

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
          "micro at 64 px / patch 8, 80 epochs of Imagenette, pixel target (the first picture "
          "model: chapter 6 compares)"),
    Entry("wide-cifar10", "wide-cifar10.pt",
          "308f37c7a18cbfbe9b4fa81bc54c28bc7f4a697d63bedfbb1fcb54622cff6140",
          "256-d x 8-block encoder, 64 epochs of CIFAR-10 under bf16 autocast, norm-pix target "
          "(chapter 7)"),
    Entry("wide-imagenette-pixels", "wide-imagenette-pixels.pt",
          "65556a44a47a1258978ffe25ddead2c6b80029fc6297b149c86f44a94d6d9820",
          "256-d x 8-block encoder at 128 px / patch 16, 200 epochs of Imagenette under bf16 "
          "autocast, pixel target (pictures: chapters 6 and 9, the released-weights page)"),
)}


def names() -> list[str]:
    """The registered names."""
    return sorted(REGISTRY)


def lookup(name: str) -> Entry:
    if name not in REGISTRY:
        raise CheckpointError(
            f"no trained model is named {name!r}.{did_you_mean(name, names())} The names are: "
            f"{', '.join(names()) or 'none'}; a run folder or {CHECKPOINT} of your own loads "
            f"with mae.checkpoint.load_pretrained(path).")
    return REGISTRY[name]


def checkout_dir() -> Path:
    """``checkpoints/`` of the checkout this package was imported from (it may not exist)."""
    return Path(__file__).resolve().parents[1] / "checkpoints"


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
                f"the file was changed. Restore it: git -C {local.parent.parent} checkout -- "
                f"{local.parent.name}/{local.name}")
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
    name, `mae.files.atomic_write`); a download shorter than the server's Content-Length, or
    (with ``sha``) one whose sha256 differs, is refused and not kept."""
    digest, size = hashlib.sha256(), 0
    try:
        with atomic_write(target) as f, urllib.request.urlopen(url, timeout=60) as response:
            for block in iter(lambda: response.read(1 << 20), b""):
                f.write(block)
                digest.update(block)
                size += len(block)
            length = response.headers.get("Content-Length", "")
            if length.isdigit() and size != int(length):
                raise CheckpointError(f"the download of {what} from {url} stopped after {size} of "
                                      f"{length} bytes; it was not kept. Try again, or {fix}.")
            found = digest.hexdigest()
            if sha is not None and found != sha:
                raise CheckpointError(
                    f"the download of {what} from {url} has sha256 {found[:16]}..., not the "
                    f"registered {sha[:16]}...; it was not kept. Try again, or {fix}.")
    except DiskFullError:
        raise
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise CheckpointError(f"cannot download {what} from {url} ({reason}): {fix}.") from e
    return target


def official_file(source: str) -> Path:
    """The local file of an official checkpoint: ``source`` itself, or for a URL its download,
    cached under a hash of the whole URL (query included) and its file name, so two URLs never
    share a file."""
    if "://" not in source:
        return Path(source)
    name = Path(urllib.parse.urlparse(source).path).name
    if source.endswith("/") or not name:
        raise CheckpointError(f"{source} names a folder, not a file: pass the URL of the .pth file "
                              f"itself (as the released-weights page lists them).")
    cached = cache_dir() / "official" / f"{hashlib.sha256(source.encode()).hexdigest()[:16]}-{name}"
    if not cached.is_file():
        from .files import check_writable

        check_writable(cached.parent, "download cache folder ($MAE_CACHE)")
        download(source, cached, None, "the official checkpoint",
                 "check the URL and the network, or download it by hand and pass its path")
    return cached


def load_official(source: str | os.PathLike, preset: str = "large", **overrides: Any):
    """An MAE with the weights of an official facebookresearch/mae checkpoint: ``source`` is its
    URL (downloaded once into ``$MAE_CACHE``) or a local ``.pth`` file; ``preset`` and
    ``overrides`` must describe the checkpoint's model (e.g. ``norm_pix_loss=False`` for the
    "visualize" checkpoints). Returns the model in eval mode."""
    import torch

    from .config import MAEConfig
    from .convert import ConversionError, load_weights
    from .model import MAE

    model = MAE(MAEConfig.preset(preset, **overrides))  # a config error before any download
    source = os.fspath(source)
    local = official_file(source)
    if not local.is_file():
        raise CheckpointError(f"{local} does not exist: pass the .pth file you downloaded, or "
                              f"its URL.")
    try:
        state = torch.load(local, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file at all (an HTML page, a damaged copy)
        if local != Path(source):  # a download: never kept when it does not load
            local.unlink(missing_ok=True)
            raise CheckpointError(f"the file downloaded from {source} cannot be read as a torch "
                                  f"checkpoint ({type(e).__name__}); it was not kept. Check that "
                                  f"the URL names the .pth file itself.") from e
        raise CheckpointError(f"{local} cannot be read as a torch checkpoint "
                              f"({type(e).__name__}); download it again.") from e
    missing, unexpected = load_weights(model, state, "official", strict=False)
    if missing or unexpected:
        keys = "; ".join(f"{what} {len(k)} key(s): {', '.join(k[:5])}{' ...' * (len(k) > 5)}"
                         for what, k in (("missing", missing), ("unexpected", unexpected)) if k)
        raise ConversionError(
            f"{source} does not fit the model of preset {preset!r} with {overrides or 'no'} "
            f"overrides ({keys}): pass the preset and overrides of the checkpoint's model. A "
            f"fine-tuned encoder-only file has no decoder: read it with torch.load and "
            f"mae.convert.load_weights(model, state, 'official', strict=False).")
    return model.eval()


def resolve(source: str | os.PathLike) -> Path:
    """What ``--checkpoint`` names: an existing path as it is, else a registered model's file."""
    if Path(source).exists():
        return Path(source)
    if str(source) in REGISTRY:
        return path(str(source))
    if hint := did_you_mean(str(source), names()):
        raise CheckpointError(f"checkpoint {source} does not exist, and no trained model is "
                              f"named so.{hint} (python -m mae export --list names them all.)")
    return Path(source)


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


def run_record(ckpt_path: Path, ckpt: dict[str, Any]) -> dict[str, Any]:
    """How the run reached the checkpoint's own step: its ``pretrain_metrics.json`` when that
    records this step, else what the checkpoint holds, with a note (a run stopped before its end
    wrote none, or kept an earlier segment's when it was resumed and stopped again)."""
    import json

    metrics_file = ckpt_path.parent / "pretrain_metrics.json"
    try:
        metrics = json.loads(metrics_file.read_text())
    except (OSError, ValueError):
        metrics = {}
    step, history = ckpt["step"], ckpt.get("history") or []
    if metrics.get("steps") == step:
        return metrics
    found = f"records step {metrics.get('steps')}" if metrics else "is absent or unreadable"
    return {"steps": step, "epochs": history[-1]["epoch"] if history else 0.0,
            "wall_time_s": ckpt.get("wall_time"), "cpu_time_s": ckpt.get("cpu_time"),
            "config": ckpt["config"], "data": ckpt.get("data"),
            "precision": ckpt.get("precision"), "skipped_images": ckpt.get("skipped_images"),
            "note": f"the run stopped at step {step} before it wrote its record "
                    f"({metrics_file.name} {found}): this record is what {CHECKPOINT} holds"}


def without_paths(value: Any, local: dict[str, str]) -> Any:
    """``value`` (a record: dicts, lists, strings) with each prefix of ``local`` replaced in every
    string, e.g. ``/work/runs/`` by nothing and the data root by ``$MAE_DATA/``."""
    if isinstance(value, dict):
        return {k: without_paths(v, local) for k, v in value.items()}
    if isinstance(value, list):
        return [without_paths(v, local) for v in value]
    if isinstance(value, str):
        for prefix, shown in local.items():
            value = value.replace(prefix, shown)
    return value


def export(run: str | os.PathLike, out: str | os.PathLike,
           overwrite: bool = False) -> dict[str, Any]:
    """Write the weights-only part of a pre-training run (model weights, configs, data fingerprint;
    no optimizer state, a third of the size) to ``out``, and its record beside it (the same name,
    ``.json``): the run's record at the checkpoint's step (`run_record`) plus the file's size and
    sha256. Returns the record. Existing files are replaced only with ``overwrite``."""
    from .config import ConfigError
    from .files import check_writable, write_json_atomic

    out = Path(out)
    if out.suffix != ".pt":
        raise ConfigError(f"--out {out} should end in .pt (its record goes to "
                          f"{out.with_suffix('.json').name}).")
    there = [str(p) for p in (out, out.with_suffix(".json")) if p.exists()]
    if there and not overwrite:
        raise ConfigError(f"{' and '.join(there)} already exist{'s' * (len(there) == 1)}: pass "
                          f"--overwrite to replace, or choose another --out.")
    ckpt_path = run_checkpoint(run)
    ckpt = load_checkpoint(ckpt_path)
    if "optimizer" not in ckpt or "step" not in ckpt:
        raise CheckpointError(f"{ckpt_path} is not a pre-training checkpoint (no optimizer state "
                              f"or step): export the {CHECKPOINT} that pretrain wrote.")
    check_writable(out.parent, "--out folder")
    # A shared file names no path of the machine that trained it: the run folder by its name,
    # the datasets relative to $MAE_DATA.
    local = {str(ckpt_path.resolve().parent.parent) + os.sep: ""}
    if os.environ.get("MAE_DATA"):
        local[str(Path(os.environ["MAE_DATA"]).resolve()) + os.sep] = "$MAE_DATA/"
    pretrain, data = without_paths(run_record(ckpt_path, ckpt), local), without_paths(
        ckpt.get("data"), local)
    save_checkpoint(out, {"model": ckpt["model"], "config": ckpt["config"], "data": data,
                          "step": ckpt["step"], "pretrain": pretrain,
                          "epoch_loss": epoch_means(ckpt["history"])})
    record = {"file": out.name, "sha256": sha256(out), "bytes": out.stat().st_size,
              "step": ckpt["step"], "config": ckpt["config"], "data": data, "pretrain": pretrain}
    write_json_atomic(out.with_suffix(".json"), record)
    return record
