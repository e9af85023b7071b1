"""Image-folder datasets (Imagenette, ImageNet subsets): decoded once, cached as uint8 tensors.

A root holds ``train/<class>/<image>`` and ``val/<class>/<image>`` (or ``test/``), as a folder
or a ``.tar.gz``. Labels index the train split's sorted class names in every split; the cache is
keyed on everything it was built from.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .dataset import (
    IMAGE_SUFFIXES, IMAGENET_MEAN, IMAGENET_STD, DataError, ImageDataset, download_with,
    missing_error,
)
from .files import atomic_write, cache_dir, remove_stale_temporaries


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


DECODE_VERSION = 1  # bump when _decode changes: every image-folder cache is then rebuilt


def _source_key(source: Path, split: str) -> str:
    """What a decoded cache was built from, so that any change to it makes a new cache: a
    tarball's bytes, or every image file's path, size and modification time in the split."""
    digest = hashlib.sha256(f"v{DECODE_VERSION}|{source.resolve()}|{split}".encode())
    if source.is_file():
        with open(source, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    else:
        for file in sorted((source / split).rglob("*")):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                st = file.stat()
                digest.update(f"{file.relative_to(source)}|{st.st_size}|{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def train_classes(source: Path) -> list[str]:
    """The class names of the train split, sorted (ImageFolder's order): every split is labelled
    by this list, so that label i means the same class in train and val."""
    if source.is_file():
        try:
            with tarfile.open(source, "r:gz") as tar:
                names = {Path(m.name).parts for m in tar if m.isdir() or m.isfile()}
        except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
            raise DataError(f"{source} is truncated or corrupted ({type(e).__name__}: {e}); "
                            f"delete it and download again.") from e
        return sorted({p[p.index("train") + 1] for p in names
                       if "train" in p and len(p) > p.index("train") + 2})
    return sorted(p.name for p in (source / "train").iterdir() if p.is_dir())


def load_image_folder(name: str, split: str, source: Path, size: int) -> ImageDataset:
    """Decode a class-per-folder split once, cache the uint8 tensors, and return them. Labels
    are indices into the train split's sorted class names, for every split."""
    key = hashlib.sha256(f"{_source_key(source, split)}|{size}".encode()).hexdigest()[:12]
    cached = cache_dir() / f"{name.replace(':', '_').replace('/', '_')}-{split}-{size}px-{key}.pt"
    if cached.is_file():
        try:
            blob = torch.load(cached, weights_only=True)
            return _folder_dataset(name, split, blob, source)
        except (RuntimeError, EOFError, KeyError, pickle.UnpicklingError):
            cached.unlink()  # a broken cache is rebuilt, never trusted
    classes = train_classes(source)
    index = {c: i for i, c in enumerate(classes)}
    items = _iter_tar(source, split) if source.is_file() else _iter_folder(source / split)
    images, labels = [], []
    from tqdm import tqdm  # plain: tqdm.auto warns in notebooks without ipywidgets

    for cls, where, data in tqdm(items, desc=f"decoding {name} {split} at {size}px", unit="img",
                                 leave=False, disable=None):
        if cls not in index:
            raise DataError(f"{split} class {cls!r} ({where}) is not a class of the train split "
                            f"of {source}, whose classes are {', '.join(classes[:10])}"
                            f"{' ...' if len(classes) > 10 else ''}: labels would not match. "
                            f"Add it to train/ or remove it from {split}/.")
        labels.append(index[cls])
        images.append(_decode(data, size, where))
    if not images:
        raise DataError(f"no images found for split {split!r} in {source}: expected "
                        f"{split}/<class>/<image> inside it.")
    blob = {"images": torch.stack(images), "labels": torch.tensor(labels), "classes": classes}
    if cached.parent.is_dir():
        remove_stale_temporaries(cached.parent)  # a decode killed while saving: GBs
    with atomic_write(cached) as f:
        torch.save(blob, f)
    return _folder_dataset(name, split, blob, source)


def _folder_dataset(name: str, split: str, blob: dict[str, Any], source: Path) -> ImageDataset:
    return ImageDataset(name, split, blob["images"], blob["labels"].long(), list(blob["classes"]),
                        IMAGENET_MEAN, IMAGENET_STD, source=str(source))


def find_imagenette(root: Path, download: bool) -> Path:
    candidates = [root / "imagenette2-128" / "imagenette2-128.tar.gz", root / "imagenette2-128",
                  root / "imagenette2-160", root / "imagenette2-320", root / "imagenette2"]
    for path in candidates:
        if path.is_file() or (path / "train").is_dir():
            return path
    if download:
        import torchvision

        download_with("imagenette", root, lambda: torchvision.datasets.Imagenette(
            str(root), split="train", size="160px", download=True))
        return root / "imagenette2-160"
    raise missing_error("imagenette", candidates, root)
