"""The streaming loader (mae.streaming): draws as functions of (seed, step, slot), exact resume
after SIGKILL and 2-rank DDP equivalence on a generated JPEG folder, the loader choice."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mae.checkpoint import load_checkpoint
from mae.data import DataError, ImageDataset, load_dataset
from mae.streaming import FolderFiles, stream_batches
from mae.train import epoch_order

ROOT = Path(__file__).resolve().parents[1]
MODEL = ["--set=img_size=32", "--set=patch_size=8", "--set=encoder_dim=32",
         "--set=encoder_layers=1", "--set=encoder_heads=2", "--set=decoder_dim=16",
         "--set=decoder_layers=1", "--set=decoder_heads=2"]


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory):
    """3 classes of JPEGs of assorted sizes (40-90 px, not square), train and val."""
    from PIL import Image

    root = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    for split, count in (("train", 24), ("val", 4)):
        for c in ("ant", "bee", "cat"):
            (root / split / c).mkdir(parents=True)
            for i in range(count):
                h, w = rng.integers(40, 90, size=2)
                pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i:03d}.jpg", quality=90)
    return root


def batches(data, start, stop, workers, rank=0, world=1, accum=1):
    return [b.clone() for b in stream_batches(
        data, lambda e: epoch_order(len(data), 0, e), 16, accum, 0, start, stop, 4, rank, world,
        workers=workers)]


def test_every_crop_is_a_function_of_seed_step_and_slot(jpeg_folder):
    data = load_dataset(f"folder:{jpeg_folder}", "train", img_size=32, loader="stream")
    assert isinstance(data, FolderFiles) and len(data) == 72 and data.num_classes == 3
    assert data.fingerprint()["loader"] == "stream"
    whole = batches(data, 0, 6, workers=0)
    assert len(whole) == 6 and whole[0].shape == (16, 3, 32, 32) and whole[0].dtype == torch.uint8
    assert all(torch.equal(a, b) for a, b in zip(whole, batches(data, 0, 6, workers=2)))
    assert all(torch.equal(a, b) for a, b in zip(whole[2:], batches(data, 2, 6, workers=2)))
    ranks = [batches(data, 0, 6, 1, rank=r, world=2, accum=2) for r in (0, 1)]
    for step in range(6):  # part 0 of rank 0, of rank 1, part 1 of rank 0, of rank 1
        quarters = [ranks[0][2 * step], ranks[1][2 * step], ranks[0][2 * step + 1],
                    ranks[1][2 * step + 1]]
        assert torch.equal(torch.cat(quarters), whole[step])
    assert not torch.equal(whole[0], whole[4])  # epoch 1: another order, other crops


@pytest.mark.parametrize("fits", [True, False])
def test_auto_resolves_by_the_dataset_not_by_free_memory(jpeg_folder, tmp_path, monkeypatch, fits):
    """One command, one augmentation on any machine: folder: sets stream (the official transform,
    crops of the full image), the named sets are held in memory, whatever the free memory."""
    from test_data import _fake_folder

    monkeypatch.setenv("MAE_CACHE", str(tmp_path / "cache"))
    for where in ("mae.data", "mae.streaming"):  # a large host, or one as small as for ImageNet
        monkeypatch.setattr(f"{where}.fits_in_memory", lambda n, size: fits, raising=False)
    streamed = load_dataset(f"folder:{jpeg_folder}", "val", img_size=32, loader="auto")
    assert isinstance(streamed, FolderFiles) and len(streamed) == 12
    _fake_folder(tmp_path / "data")
    held = load_dataset("imagenette", "train", root=tmp_path / "data", img_size=16, loader="auto")
    assert isinstance(held, ImageDataset)
    with pytest.raises(DataError, match="loader 'stream' is for image folders"):
        load_dataset("cifar10", "train", loader="stream")
    if not fits:
        with pytest.raises(DataError, match="evaluation holds them in memory: evaluate on fewer"):
            streamed.decode()


def test_the_loader_is_recorded_and_checked_on_resume(jpeg_folder, tmp_path):
    from conftest import SMALL
    from mae.checkpoint import CheckpointError
    from mae.train import pretrain

    recipe = dict(batch_size=16, epochs=1.0, warmup_epochs=0.0, num_workers=0, num_threads=1,
                  dataset=f"folder:{jpeg_folder}", max_steps=1)
    held = load_dataset(f"folder:{jpeg_folder}", "train", img_size=32, loader="memory")
    first = pretrain(SMALL, recipe, tmp_path, dataset=held, progress=False)
    assert first.metrics["loader"] == "memory"
    streamed = load_dataset(f"folder:{jpeg_folder}", "train", img_size=32, loader="stream")
    with pytest.raises(CheckpointError, match=r"trained through the memory loader, now the stream loader"):
        pretrain(SMALL, {**recipe, "max_steps": 2}, tmp_path, dataset=streamed, resume=True,
                 progress=False)
    second = pretrain(SMALL, recipe, tmp_path / "s", dataset=streamed, progress=False)
    assert second.metrics["loader"] == "stream"


def pretrain_cli(folder, out, *extra):
    return [sys.executable, "-m", "mae", "pretrain", *MODEL, "--no-progress",
            f"--dataset=folder:{folder}", "--loader=stream", "--num-workers=2",
            "--batch-size=16", "--epochs=3", "--warmup-epochs=1", "--checkpoint-every=2",
            "--num-threads=1", f"--out={out}", *extra]


@pytest.mark.slow
def test_streaming_sigkill_then_resume_is_bitwise_identical(jpeg_folder, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    subprocess.run(pretrain_cli(jpeg_folder, tmp_path / "full"), check=True, env=env,
                   capture_output=True, cwd=ROOT)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(pretrain_cli(jpeg_folder, killed), env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:  # a checkpoint past step 4 of 12, then kill it and its workers
        history = killed / "history.json"
        if history.is_file() and len(json.loads(history.read_text())) >= 4:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert 4 <= load_checkpoint(killed / "checkpoint.pt")["step"] < 12
    subprocess.run(pretrain_cli(jpeg_folder, killed, "--resume"), check=True, env=env,
                   capture_output=True, cwd=ROOT)
    a, b = (load_checkpoint(tmp_path / d / "checkpoint.pt") for d in ("full", "killed"))
    assert a["step"] == b["step"] == 12 and a["data"] == b["data"]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]


@pytest.mark.slow
def test_streaming_ddp_two_ranks_match_one_process(jpeg_folder, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(pretrain_cli(jpeg_folder, tmp_path / "single", "--epochs=1"), check=True,
                   env=env, capture_output=True, cwd=ROOT)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node=2", *pretrain_cli(jpeg_folder, tmp_path / "ddp",
                                                              "--epochs=1")[1:]],
                         env=env, capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    a, b = (load_checkpoint(tmp_path / d / "checkpoint.pt") for d in ("single", "ddp"))
    assert a["step"] == b["step"] == 4
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=1e-5)
    for x, y in zip(a["history"], b["history"]):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-5)


@pytest.mark.slow
def test_the_paper_tier_runs_end_to_end_on_a_cpu(tmp_path, monkeypatch):
    """The paper-dry tier: ViT-L/16 widths at 224 px (2 encoder blocks), streaming pre-training,
    probe, kNN and fine-tuning, through papermill as every tier, on a generated ImageFolder."""
    from PIL import Image

    from test_ablate import ablate, project_copy

    folder = tmp_path / "imagenet"
    rng = np.random.default_rng(1)
    for split, count in (("train", 50), ("val", 10)):
        for c in ("n01", "n02", "n03", "n04"):
            (folder / split / c).mkdir(parents=True)
            for i in range(count):
                h, w = rng.integers(200, 300, size=2)
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
                    folder / split / c / f"{i}.JPEG", quality=85)
    root = project_copy(tmp_path)
    (root / "ablations" / "one.yaml").write_text(
        "title: One point\nparameter: mask_ratio\nvalues: [0.75]\ntiers: [paper-dry]\n")
    env = {**os.environ, "IMAGENET": str(folder), "MAE_CACHE": str(tmp_path / "cache")}
    run = ablate("one", "--tier", "paper-dry", "--results", str(tmp_path / "results"),
                 cwd=root, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (metrics_file,) = (tmp_path / "results" / "runs" / "paper-dry").rglob("metrics.json")
    record = json.loads(metrics_file.read_text())
    model = record["config"]["model"]
    assert (model["encoder_dim"], model["patch_size"], model["img_size"]) == (1024, 16, 224)
    assert record["data"]["train"]["loader"] == "stream"
    assert record["data"]["train"]["num_images"] == 200
    assert record["metrics"]["pretrain_steps"] == 2 and "finetune_top1" in record["metrics"]


def test_a_streamed_training_subset_is_stratified_too(jpeg_folder):
    data = load_dataset(f"folder:{jpeg_folder}", "train", img_size=32, loader="stream")
    part = data.sample(12, seed=0)
    assert torch.bincount(part.labels).tolist() == [4, 4, 4] and len(part.files) == 12
    assert part.split == "train[stratified 12 of 72, seed 0]"
    assert part.fingerprint()["split"] == part.split and part.files == sorted(part.files)
    assert part.files == data.sample(12, seed=0).files != data.sample(12, seed=1).files


@pytest.fixture
def bad_folder(jpeg_folder, tmp_path):
    """The JPEG folder with an empty file, a text file, a truncated JPEG and a dangling link."""
    import shutil

    root = tmp_path / "bad"
    shutil.copytree(jpeg_folder, root)
    bad = [root / "train" / c / f for c, f in (("ant", "000.jpg"), ("bee", "001.jpg"),
                                               ("cat", "002.jpg"), ("cat", "003.jpg"))]
    bad[0].write_bytes(b"")
    bad[1].write_text("not an image at all\n")
    bad[2].write_bytes(bad[2].read_bytes()[:300])
    bad[3].unlink()
    bad[3].symlink_to(tmp_path / "nowhere.jpg")
    return root, sorted(map(str, bad))


def test_a_bad_image_is_one_line_naming_it_or_is_skipped_and_recorded(bad_folder):
    root, bad = bad_folder
    data = load_dataset(f"folder:{root}", "train", img_size=32, loader="stream")
    assert len(data) == 72 and data.fingerprint()["num_images"] == 72  # the link is listed
    for workers in (0, 2):
        with pytest.raises(DataError) as error:
            batches(data, 0, 12, workers=workers)
        message = str(error.value)
        assert "\n" not in message and "Traceback" not in message
        assert message.startswith("cannot read image ") and message.split()[3] in bad
        assert "--skip-bad-images" in message
    runs = []
    for workers in (0, 2):
        stream = stream_batches(data, lambda e: epoch_order(len(data), 0, e), 16, 1, 0, 0, 12, 4,
                                0, 1, workers=workers, skip_bad_images=True)
        runs.append(([b.clone() for b in stream], stream.skipped))
    (first, skipped), (second, skipped_again) = runs
    assert len(first) == 12 and all(torch.equal(a, b) for a, b in zip(first, second))
    assert sorted(skipped) == bad and skipped == skipped_again  # path -> why, in one line each
    assert all("\n" not in why for why in skipped.values())


@pytest.mark.slow
def test_a_run_stopped_by_a_bad_image_resumes_past_it_with_skip_bad_images(bad_folder, tmp_path):
    root, bad = bad_folder
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    stopped = subprocess.run(pretrain_cli(root, out), env=env, capture_output=True, text=True,
                             cwd=ROOT)
    assert stopped.returncode == 2 and "Traceback" not in stopped.stderr, stopped.stderr[-2000:]
    line = stopped.stderr.strip().splitlines()[-1]
    assert line.startswith("error: cannot read image ") and line.split()[4] in bad
    resumed = subprocess.run(pretrain_cli(root, out, "--resume", "--skip-bad-images"), env=env,
                             capture_output=True, text=True, cwd=ROOT)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    metrics = json.loads((out / "pretrain_metrics.json").read_text())
    assert metrics["steps"] == 12 and sorted(metrics["skipped_images"]) == bad
    assert sorted(load_checkpoint(out / "checkpoint.pt")["skipped_images"]) == bad
    assert f"skipped unreadable image {bad[0]}" in resumed.stderr
