import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import needs_cifar
from mae import ConfigError
from mae.augment import augment, crop_boxes, normalize
from mae.data import DataError, ImageDataset, data_root, load_dataset


@needs_cifar
def test_cifar10_matches_published_values(cifar_train, cifar_test):
    assert cifar_train.images.shape == (50000, 3, 32, 32) and cifar_train.images.dtype == torch.uint8
    assert cifar_test.images.shape == (10000, 3, 32, 32)
    # Spot values of the official files (shared/data/README.md).
    row0 = cifar_train.images[0].flatten()
    assert row0[:3].tolist() == [59, 43, 50] and row0[-3:].tolist() == [140, 84, 72]
    assert cifar_train.labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert cifar_test.labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert torch.bincount(cifar_train.labels).tolist() == [5000] * 10
    assert cifar_train.classes[0] == "airplane" and cifar_train.num_classes == 10
    mean = cifar_train.images.float().mean((0, 2, 3)) / 255
    torch.testing.assert_close(mean, torch.tensor([0.49139968, 0.48215841, 0.44653091]),
                               atol=1e-4, rtol=0)


@needs_cifar
def test_fingerprint_is_stable_and_sensitive(cifar_test):
    fp = cifar_test.fingerprint()
    assert fp["num_images"] == 10000 and len(fp["sha256"]) == 16
    changed = ImageDataset("cifar10", "test", cifar_test.images.clone(), cifar_test.labels,
                           cifar_test.classes, cifar_test.mean, cifar_test.std)
    changed.images[0, 0, 0, 0] ^= 1
    assert changed.fingerprint()["sha256"] != fp["sha256"]


def test_missing_data_names_path_variable_and_download(tmp_path, monkeypatch):
    monkeypatch.setenv("MAE_DATA", str(tmp_path))
    with pytest.raises(DataError, match=rf"cifar10.*not found: searched {tmp_path}.*MAE_DATA.*"
                                        rf"download=True"):
        load_dataset("cifar10")
    with pytest.raises(DataError, match="imagenette not found"):
        load_dataset("imagenette")
    assert data_root() == tmp_path


def test_unknown_dataset_suggests_closest():
    with pytest.raises(ConfigError, match="unknown dataset key 'cifar1O'.*Did you mean 'cifar10'"):
        load_dataset("cifar1O")


def test_bad_split_and_size():
    with pytest.raises(DataError, match="unknown split 'training'"):
        load_dataset("cifar10", "training")
    with pytest.raises(DataError, match="images are 32x32"):
        load_dataset("cifar10", img_size=64)


def _fake_cifar(root: Path) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (10000, 3072), dtype=np.uint8),
                 b"labels": list(rng.integers(0, 10, 10000))}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    return folder


def test_truncated_file_is_reported(tmp_path):
    folder = _fake_cifar(tmp_path)
    load_dataset("cifar10", "test", root=tmp_path)  # intact: loads
    data = (folder / "data_batch_3").read_bytes()
    (folder / "data_batch_3").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"data_batch_3 is truncated or corrupted.*download again"):
        load_dataset("cifar10", "train", root=tmp_path)


def test_invalid_contents_are_reported(tmp_path):
    folder = _fake_cifar(tmp_path)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((10000, 3072), np.uint8), b"labels": [11] * 10000}, f)
    with pytest.raises(DataError, match=r"labels must be 10000 ints in \[0, 10\)"):
        load_dataset("cifar10", "test", root=tmp_path)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((10000, 1024), np.uint8), b"labels": [1] * 10000}, f)
    with pytest.raises(DataError, match=r"expected uint8 data of shape \(N, 3072\)"):
        load_dataset("cifar10", "test", root=tmp_path)


def _fake_folder(root: Path, classes=("b_cls", "a_cls"), n=3) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            d = root / "imagenette2-160" / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(d / f"{i}.JPEG")
    return root / "imagenette2-160"


def test_image_folder_decoded_cached_and_sorted(tmp_path, monkeypatch):
    monkeypatch.setenv("MAE_CACHE", str(tmp_path / "cache"))
    _fake_folder(tmp_path)
    data = load_dataset("imagenette", "train", root=tmp_path, img_size=16)
    assert data.images.shape == (6, 3, 16, 16) and data.images.dtype == torch.uint8
    assert data.classes == ["a_cls", "b_cls"] and data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert len(list((tmp_path / "cache").iterdir())) == 1
    again = load_dataset("imagenette", "train", root=tmp_path, img_size=16)  # from the cache
    assert torch.equal(again.images, data.images)
    val = load_dataset(f"folder:{tmp_path / 'imagenette2-160'}", "test", img_size=16)
    assert len(val) == 6 and val.split == "val"


def test_corrupt_archive_and_image(tmp_path, monkeypatch):
    monkeypatch.setenv("MAE_CACHE", str(tmp_path / "cache"))
    folder = _fake_folder(tmp_path / "src")
    archive = tmp_path / "imagenette2-128" / "imagenette2-128.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="imagenette2-128")
    assert len(load_dataset("imagenette", "train", root=tmp_path, img_size=16)) == 6
    archive.write_bytes(archive.read_bytes()[:200])
    shutil.rmtree(tmp_path / "cache")
    with pytest.raises(DataError, match="imagenette2-128.tar.gz is truncated or corrupted"):
        load_dataset("imagenette", "train", root=tmp_path, img_size=16)
    bad = folder / "train" / "a_cls" / "0.JPEG"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"cannot decode image .*0.JPEG"):
        load_dataset(f"folder:{folder}", "train", img_size=16)


def test_crop_boxes_follow_random_resized_crop():
    g = torch.Generator().manual_seed(0)
    boxes = crop_boxes(4000, 32, 32, g, scale=(0.2, 1.0))
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= 32).all() and (left + w <= 32).all()
    area = h * w / 1024
    assert area.min() >= 0.15 and area.max() <= 1.0 and 0.5 < area.mean() < 0.7
    ratio = w / h
    assert ratio.min() >= 0.6 and ratio.max() <= 1.7


def test_augment_identity_box_and_flip():
    images = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    full = torch.tensor([[0.0, 0.0, 8.0, 8.0]]).repeat(3, 1)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    out = augment(images, 8, full, torch.tensor([False, True, False]), mean, std)
    expected = normalize(images, mean, std)
    torch.testing.assert_close(out[0], expected[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1], expected[1].flip(-1), atol=1e-5, rtol=0)
    # Each quadrant's box at its own size samples exactly that quadrant's pixels (flipped where
    # asked): a crop of the wrong place or the wrong mirror fails.
    no_flip, flip = torch.zeros(3, dtype=torch.bool), torch.ones(3, dtype=torch.bool)
    for top in (0, 4):
        for left in (0, 4):
            box = torch.tensor([[top, left, 4.0, 4.0]] * 3)
            quadrant = expected[:, :, top:top + 4, left:left + 4]
            torch.testing.assert_close(augment(images, 4, box, no_flip, mean, std), quadrant,
                                       atol=1e-5, rtol=0)
            torch.testing.assert_close(augment(images, 4, box, flip, mean, std),
                                       quadrant.flip(-1), atol=1e-5, rtol=0)
    # Upsampled x2, the top-left quadrant is its bilinear enlargement (but for the last row and
    # column, which blend in the next quadrant's pixels: the crop lies inside the image).
    quad = augment(images, 8, torch.tensor([[0.0, 0.0, 4.0, 4.0]] * 3), no_flip, mean, std)
    bigger = F.interpolate(expected[:, :, :4, :4], scale_factor=2, mode="bilinear",
                           align_corners=False)
    torch.testing.assert_close(quad[..., :7, :7], bigger[..., :7, :7], atol=1e-5, rtol=0)


def class_sorted(counts: list[int]) -> ImageDataset:
    """Images stored class by class (as an image folder is), each marked with its index."""
    n = sum(counts)
    images = torch.zeros(n, 3, 32, 32, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n) % 256
    images[:, 0, 0, 1] = torch.arange(n) // 256
    labels = torch.cat([torch.full((c,), i) for i, c in enumerate(counts)])
    return ImageDataset("sorted", "train", images, labels, [f"c{i}" for i in range(len(counts))],
                        (0.5,) * 3, (0.25,) * 3)


def picked(data: ImageDataset) -> list[int]:
    return (data.images[:, 0, 0, 0].long() + 256 * data.images[:, 0, 0, 1].long()).tolist()


def test_a_training_subset_is_stratified_seeded_and_recorded():
    data = class_sorted([50, 50, 50])
    a = data.sample(30, seed=0)
    assert torch.bincount(a.labels).tolist() == [10, 10, 10]  # not the first 30: one class
    assert picked(a) == picked(data.sample(30, seed=0)) and picked(a) == sorted(picked(a))
    assert picked(a) != picked(data.sample(30, seed=1))
    assert a.split == "train[stratified 30 of 150, seed 0]" and a.fingerprint()["split"] == a.split
    assert sorted(torch.bincount(data.sample(31, seed=0).labels).tolist()) == [10, 10, 11]
    uneven = class_sorted([5, 100, 100]).sample(60, seed=2)
    assert sorted(torch.bincount(uneven.labels).tolist()) == [5, 27, 28]  # the small class whole
    assert torch.equal(data.sample(150, seed=3).images, data.images)
    for n in (0, 151):
        with pytest.raises(DataError, match=f"a subset of {n} images of sorted train cannot"):
            data.sample(n, seed=0)


def test_pretrain_trains_on_a_stratified_subset_of_train_subset_images():
    from conftest import SMALL
    from mae.train import pretrain

    data = class_sorted([32, 32, 32, 32])
    run = pretrain(SMALL, dict(train_subset=64, batch_size=32, max_steps=1, num_threads=1,
                               seed=5, checkpoint_every=0), dataset=data, progress=False)
    assert run.metrics["data"]["split"] == "train[stratified 64 of 128, seed 5]"
    assert run.metrics["data"]["sha256"] == data.sample(64, seed=5).fingerprint()["sha256"]
