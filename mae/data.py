"""Datasets by name, held in memory as uint8 tensors (augmented in batches by `mae.augment`).

Names: ``cifar10``, ``cifar100``, ``imagenette``, or ``folder:/path`` for any ImageFolder root with
``train/`` and ``val/`` class folders (ImageNet-100, ImageNet, ...). The data root is an argument
or the environment variable ``MAE_DATA``; decoded image folders are cached under ``MAE_CACHE``
(default ``~/.cache/mae``). Where the network allows, ``download=True`` fetches missing data.

Small sets fit in memory (CIFAR-10: 150 MB of uint8), so a training step gathers a batch by
indexing one tensor on the device and augments the whole batch with one `grid_sample` call:
no worker processes, no per-sample Python.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import zlib
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import unknown_key_error

DATA_ENV = "MAE_DATA"
CACHE_ENV = "MAE_CACHE"
DATASETS = ("cifar10", "cifar100", "imagenette", "folder:<path>")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}

# Per-channel statistics on [0, 1] pixels (CIFAR-10 measured on its train set; ImageNet's are the
# ones the MAE code uses for every ImageNet-derived set).
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class DataError(RuntimeError):
    """Data missing, corrupted or invalid; the message says where we looked and what to do."""


@dataclass
class ImageDataset:
    """Images held in memory: ``images`` (N, C, H, W) uint8, ``labels`` (N,) int64."""

    name: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str = ""
    _fingerprint: dict[str, Any] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def img_size(self) -> int:
        return self.images.shape[-1]

    def fingerprint(self) -> dict[str, Any]:
        """What a run's provenance records: name, split, size, shape and a sha256 of the data."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            digest.update(self.images.cpu().contiguous().numpy().tobytes())
            digest.update(self.labels.cpu().to(torch.int64).numpy().tobytes())
            self._fingerprint = dict(
                name=self.name, split=self.split, num_images=len(self),
                shape=list(self.images.shape[1:]), num_classes=self.num_classes,
                sha256=digest.hexdigest()[:16], source=self.source,
            )
        return self._fingerprint

    def to(self, device: torch.device | str) -> ImageDataset:
        """The same dataset with its tensors on ``device`` (a new object; this one is unchanged)."""
        return dataclasses.replace(self, images=self.images.to(device),
                                   labels=self.labels.to(device))

    def subset(self, n: int) -> ImageDataset:
        """The first n images (datasets are stored in a fixed order)."""
        return ImageDataset(self.name, f"{self.split}[:{n}]", self.images[:n], self.labels[:n],
                            self.classes, self.mean, self.std, self.source)


# ----- roots ----------------------------------------------------------------------------------
def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data folder: ``root`` if given, else $MAE_DATA, else ``~/.cache/mae/data``."""
    if root is not None:
        return Path(root).expanduser()
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    return Path("~/.cache/mae/data").expanduser()


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/mae").expanduser()


def _missing(what: str, searched: list[Path], root: Path, hint: str = "") -> DataError:
    where = ", ".join(str(p) for p in searched)
    origin = f"${DATA_ENV}" if os.environ.get(DATA_ENV) else "the default data folder"
    return DataError(
        f"{what} not found: searched {where} (root {root}, from {origin}). Set {DATA_ENV} to the "
        f"folder that holds it or pass root=... (--data-root), or pass download=True "
        f"(--download) to fetch it where the network allows.{hint}"
    )


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
            cls(str(root), train=True, download=True)
        else:
            raise _missing(f"{name} ({spec['folder']}/)", [folder], root)
    files = spec["train"] if split == "train" else spec["test"]
    images, labels = [], []
    for file in files:
        path = folder / file
        if not path.is_file():
            raise _missing(f"{name} file {file}", [path], root)
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


# ----- image folders (Imagenette, ImageNet subsets) -------------------------------------------
def _decode(data: bytes, size: int, where: str) -> torch.Tensor:
    """JPEG/PNG bytes -> (3, size, size) uint8: shorter side resized to size, centre crop."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.v2.functional import center_crop, resize

    try:
        with Image.open(io.BytesIO(data)) as pil:
            array = np.asarray(pil.convert("RGB"))  # greyscale and CMYK images become RGB
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"cannot decode image {where} ({e}): the file is corrupted; delete or "
                        f"replace it.") from e
    img = torch.from_numpy(array.copy()).permute(2, 0, 1)  # (3, h, w)
    img = resize(img, [size], antialias=True)
    return center_crop(img, [size, size])


def _iter_tar(path: Path, split: str):
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                parts = Path(member.name).parts
                if member.isfile() and split in parts and Path(member.name).suffix.lower() in IMAGE_SUFFIXES:
                    yield parts[parts.index(split) + 1], member.name, tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DataError(f"{path} is truncated or corrupted ({type(e).__name__}: {e}); delete it "
                        f"and download again, or restore it from a good copy.") from e


def _iter_folder(path: Path):
    for cls_dir in sorted(p for p in path.iterdir() if p.is_dir()):
        for file in sorted(cls_dir.iterdir()):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                yield cls_dir.name, str(file), file.read_bytes()


def _load_image_folder(name: str, split: str, source: Path, size: int) -> ImageDataset:
    """Decode a class-per-folder split once, cache the uint8 tensors, and return them."""
    key = hashlib.sha256(f"{source.resolve()}|{source.stat().st_size}|{source.stat().st_mtime}|"
                         f"{split}|{size}".encode()).hexdigest()[:12]
    cached = cache_dir() / f"{name.replace(':', '_').replace('/', '_')}-{split}-{size}px-{key}.pt"
    if cached.is_file():
        try:
            blob = torch.load(cached, weights_only=True)
            return _folder_dataset(name, split, blob, source)
        except (RuntimeError, EOFError, KeyError, pickle.UnpicklingError):
            cached.unlink()  # a broken cache is rebuilt, never trusted
    items = _iter_tar(source, split) if source.is_file() else _iter_folder(source / split)
    images, labels, classes = [], [], {}
    from tqdm import tqdm  # plain: tqdm.auto warns in notebooks without ipywidgets

    for cls, where, data in tqdm(items, desc=f"decoding {name} {split} at {size}px", unit="img",
                                 leave=False, disable=None):
        labels.append(classes.setdefault(cls, len(classes)))
        images.append(_decode(data, size, where))
    if not images:
        raise DataError(f"no images found for split {split!r} in {source}: expected "
                        f"{split}/<class>/<image> inside it.")
    # ImageFolder order: classes sorted by name.
    order = sorted(classes)
    remap = torch.tensor([order.index(c) for c in classes])
    blob = {"images": torch.stack(images), "labels": remap[torch.tensor(labels)],
            "classes": order}
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    torch.save(blob, tmp)
    os.replace(tmp, cached)
    return _folder_dataset(name, split, blob, source)


def _folder_dataset(name: str, split: str, blob: dict[str, Any], source: Path) -> ImageDataset:
    return ImageDataset(name, split, blob["images"], blob["labels"].long(), list(blob["classes"]),
                        IMAGENET_MEAN, IMAGENET_STD, source=str(source))


def _find_imagenette(root: Path, download: bool) -> Path:
    candidates = [root / "imagenette2-128" / "imagenette2-128.tar.gz", root / "imagenette2-128",
                  root / "imagenette2-160", root / "imagenette2-320", root / "imagenette2"]
    for path in candidates:
        if path.is_file() or (path / "train").is_dir():
            return path
    if download:
        import torchvision

        torchvision.datasets.Imagenette(str(root), split="train", size="160px", download=True)
        return root / "imagenette2-160"
    raise _missing("imagenette", candidates, root)


# ----- public entry point ---------------------------------------------------------------------
def load_dataset(
    name: str, split: str = "train", root: str | os.PathLike | None = None,
    img_size: int | None = None, download: bool = False,
) -> ImageDataset:
    """Load a dataset split into memory.

    Args:
        name: ``cifar10``, ``cifar100``, ``imagenette`` or ``folder:/path/to/root``.
        split: ``train``, or ``test`` (an alias of ``val`` for image folders, and vice versa).
        root: data folder; default $MAE_DATA.
        img_size: side of the stored images for image folders (default 128 for Imagenette,
            224 otherwise); CIFAR is always 32.
        download: fetch missing data (needs network).
    """
    if split not in ("train", "test", "val"):
        raise DataError(f"unknown split {split!r}: use 'train' or 'test' ('val').")
    base = data_root(root)
    if name in CIFAR:
        if img_size not in (None, 32):
            raise DataError(f"{name} images are 32x32; img_size={img_size} is not available. "
                            f"Use a 32-px model config (e.g. the micro or tiny preset).")
        return _load_cifar(name, "train" if split == "train" else "test", base, download)
    folder_split = "train" if split == "train" else "val"
    if name == "imagenette":
        return _load_image_folder(name, folder_split, _find_imagenette(base, download),
                                  img_size or 128)
    if name.startswith("folder:"):
        path = Path(name.split(":", 1)[1]).expanduser()
        if not (path / folder_split).is_dir():
            raise _missing(f"image folder split {folder_split!r}", [path / folder_split], path,
                           " An image folder needs train/<class>/* and val/<class>/*.")
        return _load_image_folder(name, folder_split, path, img_size or 224)
    raise unknown_key_error(name, ["cifar10", "cifar100", "imagenette", "folder:"], "dataset")
