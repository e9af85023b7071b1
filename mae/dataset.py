"""What a dataset is here: `ImageDataset` (uint8 images held in memory, with a fingerprint for
provenance), `DataError`, and where data and caches live: the data root is an argument or
``$MAE_DATA``; decoded image folders are cached under ``$MAE_CACHE`` (default ``~/.cache/mae``).

Small sets fit in memory (CIFAR-10: 150 MB of uint8), so a training step gathers a batch by
indexing one tensor on the device and augments the whole batch at once (`mae.augment`): no
worker processes, no per-sample Python. Loading by name is `mae.data.load_dataset`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import MAEError
from .runtime import STREAM_SUBSET, generator

DATA_ENV = "MAE_DATA"
DATASETS = ("cifar10", "cifar100", "imagenette", "folder:<path>")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}

# Per-channel statistics on [0, 1] pixels (CIFAR-10 measured on its train set; ImageNet's are the
# ones the MAE code uses for every ImageNet-derived set).
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class DataError(MAEError, RuntimeError):
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

    @property
    def channels(self) -> int:
        return self.images.shape[1]

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

    def check_size(self, img_size: int, use: str) -> None:
        """One rule everywhere (training, evaluation, pictures): images are used at the model's
        size, never silently resized. Raises DataError naming both sizes and the fix."""
        if self.img_size != img_size:
            raise DataError(
                f"{self.name} {self.split} images are {self.img_size} px but the model takes "
                f"{img_size} px, so {use} would have to resize them: use data at the model's size "
                f"(image folders load at any size: img_size={img_size}), or a model built for "
                f"{self.img_size}-px images.")

    def to(self, device: torch.device | str) -> ImageDataset:
        """The same dataset with its tensors on ``device`` (a new object; this one is unchanged)."""
        return dataclasses.replace(self, images=self.images.to(device),
                                   labels=self.labels.to(device))

    def subset(self, n: int) -> ImageDataset:
        """The first n images (datasets are stored in a fixed order): what evaluation's
        --train-subset / --test-subset take. Training takes `sample`."""
        check_subset(self, n)
        return ImageDataset(self.name, f"{self.split}[:{n}]", self.images[:n], self.labels[:n],
                            self.classes, self.mean, self.std, self.source)

    def sample(self, n: int, seed: int) -> ImageDataset:
        """n images drawn with `stratified_indices` (an equal share of each class, a function
        of the seed), in stored order; the split's name records how (``train[stratified n of
        N, seed s]``), and so does the fingerprint."""
        idx = stratified_indices(self.labels, self.num_classes, check_subset(self, n), seed)
        return ImageDataset(self.name, sample_name(self, n, seed), self.images[idx],
                            self.labels[idx], self.classes, self.mean, self.std, self.source)


def check_subset(data: Any, n: int) -> int:
    if not 0 < n <= len(data):
        raise DataError(f"a subset of {n} images of {data.name} {data.split} cannot be taken: "
                        f"it has {len(data)}; ask for 1 to {len(data)} (0 in a config means all "
                        f"of them).")
    return n


def sample_name(data: Any, n: int, seed: int) -> str:
    return f"{data.split}[stratified {n} of {len(data)}, seed {seed}]"


def stratified_indices(labels: torch.Tensor, num_classes: int, n: int, seed: int) -> torch.Tensor:
    """Indices of n of the images, sorted: each class in a random order (of the seed), then
    taken in rounds, one image of every class a round (classes in a random order too), so that
    every class gives an equal share (within one image) and a class with fewer images gives all
    it has. On a class-sorted image folder the first n images would be a few classes."""
    g = generator(seed, 0, STREAM_SUBSET)
    counts = torch.bincount(labels.cpu(), minlength=num_classes)
    by_class = torch.argsort(labels.cpu(), stable=True).split(counts.tolist())
    place = torch.randperm(num_classes, generator=g)  # which class goes first in a round
    rank = torch.empty(len(labels), dtype=torch.long)
    for c, members in enumerate(by_class):
        shuffled = members[torch.randperm(len(members), generator=g)]
        rank[shuffled] = torch.arange(len(members)) * num_classes + place[c]
    return torch.argsort(rank)[:n].sort().values


# ----- roots ----------------------------------------------------------------------------------
def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data folder: ``root`` if given, else $MAE_DATA, else ``~/.cache/mae/data``."""
    if root is not None:
        return Path(root).expanduser()
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    return Path("~/.cache/mae/data").expanduser()


def download_with(what: str, root: Path, fetch) -> None:
    """Run ``fetch()`` (a torchvision download); a network failure becomes a `DataError` that says
    what could not be fetched and how to get it another way."""
    import urllib.error

    try:
        fetch()
    except (urllib.error.URLError, OSError, RuntimeError) as e:
        reason = getattr(e, "reason", None) or e
        raise DataError(f"cannot download {what} into {root} ({reason}): check the network (or "
                        f"the proxy settings), or copy the dataset there by hand and drop "
                        f"--download.") from e


def missing_error(what: str, searched: list[Path], root: Path, hint: str = "") -> DataError:
    where = ", ".join(str(p) for p in searched)
    origin = f"${DATA_ENV}" if os.environ.get(DATA_ENV) else "the default data folder"
    return DataError(
        f"{what} not found: searched {where} (root {root}, from {origin}). Set {DATA_ENV} to the "
        f"folder that holds it or pass root=... (--data-root), or pass download=True "
        f"(--download) to fetch it where the network allows.{hint}"
    )
