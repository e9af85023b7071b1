"""Streaming pre-training data, for image folders too big to hold decoded in memory.

ImageNet-1K is 1.28 M images, about 190 GB decoded at 224 px: more than a host holds. Here the
split is a list of files (`FolderFiles`); worker processes of a `torch.utils.data.DataLoader`
read each JPEG, take its random-resized crop (area 0.2-1 of the original, torchvision's rule,
resized with bicubic interpolation as the official transform does) and flip it, and the training
loop gets uint8 batches at the model's size.

Every draw is a function of (seed, step, slot in the global batch): the image is the epoch's
order at that slot (the same order as in memory), and its crop and flip come from a generator
seeded by (seed, step, slot). So a resumed run and each DDP rank see exactly what one
uninterrupted process sees, with any number of workers.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .augment import crop_boxes
from .dataset import (
    IMAGE_SUFFIXES, DataError, ImageDataset, check_subset, sample_name, stratified_indices,
)
from .runtime import STREAM_CROP, generator


@dataclass
class FolderFiles:
    """An image-folder split as files, decoded on demand: ``files[i]`` has label ``labels[i]``."""

    name: str
    split: str
    files: list[str]
    labels: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    img_size: int  # the side of the crops the loader returns
    source: str = ""
    _fingerprint: dict[str, Any] | None = field(default=None, repr=False)

    channels = 3  # every image is converted to RGB

    def __len__(self) -> int:
        return len(self.files)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def fingerprint(self) -> dict[str, Any]:
        """Name, split, size, and a sha256 of every file's path, byte size and label (the
        pixels are not read: that is the point of streaming)."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            for path, label in zip(self.files, self.labels.tolist()):
                rel = os.path.relpath(path, self.source) if self.source else path
                digest.update(f"{rel}|{_size(path)}|{label}\n".encode())
            self._fingerprint = dict(
                name=self.name, split=self.split, num_images=len(self),
                shape=[3, self.img_size, self.img_size], num_classes=self.num_classes,
                sha256=digest.hexdigest()[:16], source=self.source, loader="stream")
        return self._fingerprint

    def to(self, device) -> FolderFiles:
        return self  # nothing is held in memory

    def decode(self) -> ImageDataset:
        """These images in memory, as the in-memory loader holds them (shorter side resized to
        img_size, centre crop): for evaluation, which reads every image once per pass."""
        from .imagefolder import _decode

        if not fits_in_memory(len(self), self.img_size):
            need = len(self) * 3 * self.img_size ** 2 / 2**30
            raise DataError(f"{len(self)} images of {self.name} {self.split} at {self.img_size} px "
                            f"take {need:.1f} GiB decoded, more than half the free memory, and "
                            f"evaluation holds them in memory: evaluate on fewer (a tier's "
                            f"eval_train_subset, --train-subset) or on a larger host.")
        images = [_decode(Path(f).read_bytes(), self.img_size, f) for f in self.files]
        return ImageDataset(self.name, self.split, torch.stack(images), self.labels,
                            self.classes, self.mean, self.std, self.source)

    def subset(self, n: int) -> FolderFiles:
        """The first n files (in ImageFolder's order); `ImageDataset.subset`."""
        check_subset(self, n)
        return FolderFiles(self.name, f"{self.split}[:{n}]", self.files[:n], self.labels[:n],
                           self.classes, self.mean, self.std, self.img_size, self.source)

    def sample(self, n: int, seed: int) -> FolderFiles:
        """n files, an equal share of each class (`ImageDataset.sample`)."""
        idx = stratified_indices(self.labels, self.num_classes, check_subset(self, n), seed)
        return FolderFiles(self.name, sample_name(self, n, seed), [self.files[i] for i in idx],
                           self.labels[idx], self.classes, self.mean, self.std, self.img_size,
                           self.source)


def _size(path: str) -> int:
    """A file's size; -1 for one that cannot be read (a dangling link): the loader names it."""
    try:
        return os.path.getsize(path)
    except OSError:
        return -1


def loader_of(data: Any) -> str:
    """The loader a dataset (or its recorded fingerprint) is read through: ``stream`` or
    ``memory`` (an in-memory fingerprint has no ``loader`` entry)."""
    fingerprint = data if isinstance(data, dict) else data.fingerprint()
    return fingerprint.get("loader", "memory")


def list_folder(folder: Path, classes: list[str]) -> tuple[list[str], torch.Tensor]:
    """The image files of a split folder and their labels (indices into ``classes``), sorted."""
    index = {c: i for i, c in enumerate(classes)}
    files, labels = [], []
    for cls_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        if cls_dir.name not in index:
            raise DataError(f"class {cls_dir.name!r} of {folder} is not a class of the train "
                            f"split: labels would not match. Add it to train/ or remove it.")
        for file in sorted(cls_dir.iterdir()):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                files.append(str(file))
                labels.append(index[cls_dir.name])
    if not files:
        raise DataError(f"no images found in {folder}: expected <class>/<image> inside it.")
    return files, torch.tensor(labels)


def fits_in_memory(num_images: int, size: int, share: float = 0.5) -> bool:
    """Whether the split decoded at ``size`` px (uint8) takes less than ``share`` of the memory
    available now: whether evaluation can hold a streamed split (`FolderFiles.decode`)."""
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not Linux: assume 16 GB
        available = 16 << 30
    return num_images * 3 * size * size < share * available


def read_rgb(path: str) -> np.ndarray:
    """The pixels of an image file, (h, w, 3) uint8 (greyscale and CMYK become RGB); a file that
    cannot be read (missing, empty, not an image, truncated) raises `DataError` with the reason
    in one line."""
    from PIL import Image

    try:
        with Image.open(path) as pil:
            return np.asarray(pil.convert("RGB"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(" ".join(str(e).split()) or type(e).__name__) from None


class _Crops(torch.utils.data.Dataset):
    """Sample (index, step, slot) -> (the crop of image ``index`` drawn for that slot of that
    step, the files that could not be read, with why). With ``skip_bad``, an unreadable image's
    place goes to the next readable one in the list (the same one on every resume and rank), its
    crop drawn as the slot's; without, the crop is None. Nothing is raised in a worker."""

    def __init__(self, data: FolderFiles, seed: int, augmentation: str, min_scale: float,
                 skip_bad: bool = False):
        self.data, self.seed, self.augmentation, self.min_scale = data, seed, augmentation, min_scale
        self.skip_bad = skip_bad

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[torch.Tensor | None, list]:
        from torchvision.transforms.v2.functional import InterpolationMode, center_crop, resize

        index, step, slot = key
        size, failures = self.data.img_size, []
        for offset in range(len(self.data)):
            path = self.data.files[(index + offset) % len(self.data)]
            try:
                array = read_rgb(path)
                break
            except DataError as e:
                failures.append((path, str(e)))
                if not self.skip_bad:
                    return None, failures
        else:
            return None, failures  # not one readable image
        img = torch.from_numpy(array.copy()).permute(2, 0, 1)  # (3, h, w) uint8
        g = generator(self.seed, step * 2**16 + slot, STREAM_CROP)
        if self.augmentation == "rrc":
            top, left, h, w = (int(v) for v in crop_boxes(1, img.shape[1], img.shape[2], g,
                                                         scale=(self.min_scale, 1.0))[0])
            img = resize(img[:, top:top + h, left:left + w], [size, size],
                         interpolation=InterpolationMode.BICUBIC, antialias=True)
        else:  # "none": the evaluation view (shorter side to size, centre crop)
            img = center_crop(resize(img, [size], antialias=True), [size, size])
        if self.augmentation == "rrc" and torch.rand(1, generator=g).item() < 0.5:
            img = img.flip(-1)
        return img, failures


def _collate(items: list) -> tuple[torch.Tensor | None, list]:
    crops = [crop for crop, _ in items]
    failures = [failure for _, found in items for failure in found]
    return (None if any(c is None for c in crops) else torch.stack(crops)), failures


class Stream:
    """The micro-batches of `stream_batches`; ``skipped`` maps each file replaced so far to why
    it could not be read (shared with the caller, who records it in the run)."""

    def __init__(self, loader, skip_bad: bool, skipped: dict[str, str], log=None):
        self.batches, self.skip_bad, self.skipped, self.log = iter(loader), skip_bad, skipped, log

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> torch.Tensor:
        crops, failures = next(self.batches)
        for path, why in failures:
            if not self.skip_bad or crops is None:
                raise DataError(
                    f"cannot read image {path} ({why}): delete or replace the file, or pass "
                    f"--skip-bad-images (skip_bad_images=True) to train on the next readable "
                    f"image in its place, named in the run's records.")
            if path not in self.skipped:
                self.skipped[path] = why
                if self.log:
                    self.log(f"skipped unreadable image {path} ({why}): the next readable one "
                             f"takes its place")
        return crops


def stream_batches(data: FolderFiles, orders, batch_size: int, accum_steps: int, seed: int,
                   start: int, stop: int, steps_per_epoch: int, rank: int, world: int,
                   augmentation: str = "rrc", min_scale: float = 0.2, workers: int = 0,
                   pin_memory: bool = False, skip_bad_images: bool = False,
                   skipped: dict[str, str] | None = None, log=None) -> Stream:
    """This rank's uint8 micro-batches (share, 3, S, S) for steps [start, stop), each accumulation
    part in turn, decoded ahead by ``workers`` processes. ``orders(epoch)`` is the epoch's order
    of the images (`mae.train.epoch_order`). A file that cannot be read stops it with a
    `DataError` naming the file, or with ``skip_bad_images`` is replaced (see `_Crops`), added
    to ``skipped`` and logged; under DDP each rank knows the files it read."""
    if augmentation not in ("rrc", "none"):
        raise DataError(f"the streaming loader crops with rrc or none, not {augmentation!r}: "
                        f"use augmentation rrc or none, or loader memory.")
    share = batch_size // accum_steps // world

    def keys():
        epoch_seen, order = -1, None
        for step in range(start, stop):
            epoch, within = divmod(step, steps_per_epoch)
            if epoch != epoch_seen:
                epoch_seen, order = epoch, orders(epoch)
            for part in range(accum_steps):
                first = within * batch_size + (part * world + rank) * share
                yield [(int(order[first + j]), step, first + j - within * batch_size)
                       for j in range(share)]

    loader = torch.utils.data.DataLoader(
        _Crops(data, seed, augmentation, min_scale, skip_bad_images), batch_sampler=keys(),
        num_workers=workers, collate_fn=_collate, pin_memory=pin_memory,
        prefetch_factor=4 if workers else None, persistent_workers=False)
    return Stream(loader, skip_bad_images, {} if skipped is None else skipped, log)
