"""Datasets by name, held in memory as uint8 tensors (augmented in batches by `mae.augment`).

Names: ``cifar10``, ``cifar100``, ``imagenette``, or ``folder:/path`` for any ImageFolder root with
``train/`` and ``val/`` class folders (ImageNet-100, ImageNet, ...); see `mae.dataset` for the
dataset object, the data root and the cache, `mae.imagefolder` for image folders.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import unknown_key_error
from .dataset import (
    CIFAR_MEAN, CIFAR_STD, DATASETS, IMAGENET_MEAN, IMAGENET_STD, DataError, ImageDataset,
    data_root, download_with, missing_error,
)
from .files import cache_dir
from .imagefolder import find_imagenette, load_image_folder, train_classes
from .streaming import FolderFiles, list_folder

__all__ = ["DATASETS", "DataError", "ImageDataset", "cache_dir", "data_root", "load_dataset"]


# ----- CIFAR ----------------------------------------------------------------------------------
CIFAR = {
    "cifar10": dict(folder="cifar-10-batches-py", train=[f"data_batch_{i}" for i in range(1, 6)],
                    test=["test_batch"], meta="batches.meta", names="label_names",
                    label="labels", classes=10),
    "cifar100": dict(folder="cifar-100-python", train=["train"], test=["test"], meta="meta",
                     names="fine_label_names", label="fine_labels", classes=100),
}


def _unpickle(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            raw = pickle.load(f, encoding="bytes")
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError,
            ImportError, IndexError, KeyError, OSError) as e:
        raise DataError(
            f"{path} is truncated or corrupted ({type(e).__name__}: {e}). Delete it and download "
            f"again (download=True / --download), or restore it from a good copy."
        ) from e
    if not isinstance(raw, dict):
        raise DataError(f"{path} does not hold a CIFAR batch (a dict); it holds a "
                        f"{type(raw).__name__}. Restore the file from a good copy.")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}


def _load_cifar(name: str, split: str, root: Path, download: bool) -> ImageDataset:
    spec = CIFAR[name]
    folder = root / spec["folder"]
    if not folder.is_dir():
        if download:
            import torchvision  # deferred: only needed to download

            cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
            download_with(name, root, lambda: cls(str(root), train=True, download=True))
        else:
            raise missing_error(f"{name} ({spec['folder']}/)", [folder], root)
    files = spec["train"] if split == "train" else spec["test"]
    images, labels = [], []
    for file in files:
        path = folder / file
        if not path.is_file():
            raise missing_error(f"{name} file {file}", [path], root)
        batch = _unpickle(path)
        if "data" not in batch or spec["label"] not in batch:
            raise DataError(f"{path} lacks the 'data' or {spec['label']!r} entry of a CIFAR batch: "
                            f"it is not a {name} file; restore it from a good copy.")
        data = np.asarray(batch["data"])
        lab = np.asarray(batch[spec["label"]], dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise DataError(f"{path}: expected uint8 data of shape (N, 3072), got {data.dtype} "
                            f"{data.shape}; the file is corrupted, restore it from a good copy.")
        if lab.shape != (data.shape[0],) or lab.min() < 0 or lab.max() >= spec["classes"]:
            raise DataError(f"{path}: labels must be {data.shape[0]} ints in [0, "
                            f"{spec['classes']}); the file is corrupted, restore it.")
        images.append(data)
        labels.append(lab)
    data = np.concatenate(images).reshape(-1, 3, 32, 32)
    expected = 50000 if split == "train" else 10000
    if data.shape[0] != expected:
        raise DataError(f"{name} {split} has {data.shape[0]} images, expected {expected}: a file is "
                        f"truncated; restore {folder} from a good copy.")
    meta = folder / spec["meta"]
    classes = [c.decode() if isinstance(c, bytes) else c for c in _unpickle(meta)[spec["names"]]] \
        if meta.is_file() else [str(i) for i in range(spec["classes"])]
    return ImageDataset(name, split, torch.from_numpy(data.copy()),
                        torch.from_numpy(np.concatenate(labels)), classes, CIFAR_MEAN, CIFAR_STD,
                        source=str(folder))


# ----- public entry point ---------------------------------------------------------------------
def load_dataset(
    name: str, split: str = "train", root: str | os.PathLike | None = None,
    img_size: int | None = None, download: bool = False, loader: str = "memory",
) -> ImageDataset | FolderFiles:
    """Load a dataset split into memory.

    Args:
        name: ``cifar10``, ``cifar100``, ``imagenette`` or ``folder:/path/to/root``.
        split: ``train``, or ``test`` / ``val`` (the same held-out split; an image folder may
            name its folder either way).
        root: data folder; default $MAE_DATA.
        img_size: side of the stored images for image folders (default 128 for Imagenette,
            224 otherwise); CIFAR is always 32.
        download: fetch missing data (needs network).
        loader: ``memory`` (decode once, hold in memory), ``stream`` (an image folder as a list
            of files that `mae.streaming` reads as training goes), or ``auto``: by the dataset
            alone, never by the host's free memory, so one command trains alike everywhere:
            ``folder:`` sets stream (the official transform: crops of the full image, bicubic),
            the named sets (CIFAR, Imagenette) are held in memory.
    """
    if split not in ("train", "test", "val"):
        raise DataError(f"unknown split {split!r}: use 'train' or 'test' ('val').")
    base = data_root(root)
    if name in CIFAR:
        if img_size not in (None, 32):
            raise DataError(f"{name} images are 32x32; img_size={img_size} is not available. "
                            f"Use a 32-px model config (e.g. the micro or tiny preset).")
        if loader == "stream":
            raise DataError(f"{name} is held in memory (it is small); loader 'stream' is for "
                            f"image folders: use loader memory or auto.")
        return _load_cifar(name, "train" if split == "train" else "test", base, download)
    folder_split = "train" if split == "train" else "val"
    if name == "imagenette":
        return _image_folder(name, folder_split, find_imagenette(base, download),
                             img_size or 128, "memory" if loader == "auto" else loader)
    if name.startswith("folder:"):
        path = Path(name.split(":", 1)[1]).expanduser()
        if folder_split == "val" and not (path / "val").is_dir() and (path / "test").is_dir():
            folder_split = "test"  # val/ and test/ are two names for the held-out split
        if not (path / folder_split).is_dir() or not (path / "train").is_dir():
            missing = path / folder_split if not (path / folder_split).is_dir() else path / "train"
            raise DataError(f"image folder {path} has no {missing.name}/ folder: a folder: "
                            f"dataset needs train/<class>/<image> and val/<class>/<image> (or "
                            f"test/<class>/<image>).")
        return _image_folder(name, folder_split, path, img_size or 224,
                             "stream" if loader == "auto" else loader)
    raise unknown_key_error(name, ["cifar10", "cifar100", "imagenette", "folder:"], "dataset")


def _image_folder(name: str, split: str, source: Path, size: int, loader: str):
    """In memory (decoded once, cached), or as files for the streaming loader."""
    if loader == "stream":
        if source.is_file():
            raise DataError(f"{source} is a tarball; the streaming loader reads a folder: "
                            f"extract it, or use loader memory.")
        classes = train_classes(source)
        files, labels = list_folder(source / split, classes)
        return FolderFiles(name, split, files, labels, classes, IMAGENET_MEAN, IMAGENET_STD,
                           size, str(source))
    return load_image_folder(name, split, source, size)
