"""Nothing lost, nothing silently wrong: each test names the mistake a user can make and asserts
what happens instead (the refusal and its message, or the correct result)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import SMALL
from mae import MAE, ConfigError
from mae.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from mae.convert import ConversionError, load_weights
from mae.data import DataError, ImageDataset, load_dataset
from mae.evaluate import extract_features, knn_classify
from mae.provenance import remove_stale_temporaries
from mae.train import pretrain

ROOT = Path(__file__).resolve().parents[1]
TRAIN = dict(epochs=1.0, batch_size=32, warmup_epochs=0.0, checkpoint_every=0, num_threads=1)


def random_images(n: int, seed: int = 0, size: int = 32) -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    return ImageDataset("synthetic", "train",
                        torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8),
                        torch.arange(n) % 2, ["a", "b"], (0.5,) * 3, (0.25,) * 3)


def run_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mae", *args], capture_output=True, text=True,
                          cwd=ROOT, **kwargs)


# ----- 1. a run folder is never overwritten by accident ----------------------------------------
def test_a_folder_holding_a_run_is_refused_without_resume_or_overwrite(tmp_path):
    data = random_images(64)
    pretrain(SMALL, {**TRAIN, "max_steps": 2}, tmp_path, dataset=data, progress=False)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(ConfigError, match=r"already holds a run \(checkpoint.pt\): pass --resume "
                                          r"to continue it, --overwrite to replace it"):
        pretrain(SMALL, {**TRAIN, "max_steps": 1}, tmp_path, dataset=data, progress=False)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before  # nothing lost
    replaced = pretrain(SMALL, {**TRAIN, "max_steps": 1}, tmp_path, dataset=data, progress=False,
                        overwrite=True)
    assert replaced.metrics["steps"] == 1 and load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 1
    with pytest.raises(ConfigError, match="resume and overwrite exclude each other"):
        pretrain(SMALL, TRAIN, tmp_path, dataset=data, resume=True, overwrite=True)


def test_resume_without_a_checkpoint_says_so_and_starts(tmp_path):
    lines = []
    result = pretrain(SMALL, {**TRAIN, "max_steps": 1}, tmp_path / "new", dataset=random_images(64),
                      resume=True, progress=False, log=lines.append)
    assert lines == [f"no checkpoint in {tmp_path / 'new'}: starting a new run there"]
    assert result.metrics["steps"] == 1


# ----- 2. image folders: one label list, from train --------------------------------------------
def image_folder(root: Path, split_classes: dict[str, list[str]], per_class: int = 2) -> Path:
    for split, classes in split_classes.items():
        for i, cls in enumerate(classes):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                Image.new("RGB", (20, 20), (40 * i, 10 * k, 200)).save(folder / f"{k}.png")
    return root


def test_every_split_is_labelled_by_the_train_classes(tmp_path, monkeypatch):
    monkeypatch.setenv("MAE_CACHE", str(tmp_path / "cache"))
    root = image_folder(tmp_path / "data", {"train": ["ant", "bee", "cat"], "val": ["ant", "cat"]})
    val = load_dataset(f"folder:{root}", "val", img_size=16)
    assert val.classes == ["ant", "bee", "cat"]
    assert val.labels.tolist() == [0, 0, 2, 2]  # cat is 2 in train too, not 1


def test_a_val_class_unknown_to_train_is_an_error_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MAE_CACHE", str(tmp_path / "cache"))
    root = image_folder(tmp_path / "data", {"train": ["ant", "bee"], "val": ["ant", "dog"]})
    with pytest.raises(DataError, match=r"val class 'dog' .* is not a class of the train split"):
        load_dataset(f"folder:{root}", "val", img_size=16)


def test_a_test_folder_is_the_held_out_split(tmp_path, monkeypatch):
    monkeypatch.setenv("MAE_CACHE", str(tmp_path / "cache"))
    root = image_folder(tmp_path / "data", {"train": ["ant", "bee"], "test": ["bee"]})
    held_out = load_dataset(f"folder:{root}", "test", img_size=16)
    assert held_out.split == "test" and held_out.labels.tolist() == [1, 1]
    with pytest.raises(DataError, match=r"has no val/ folder|has no test/ folder"):
        load_dataset(f"folder:{image_folder(tmp_path / 'bare', {'train': ['a']})}", "val")


# ----- 3. caches follow what they were built from ----------------------------------------------
def test_adding_an_image_inside_a_class_folder_rebuilds_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MAE_CACHE", str(tmp_path / "cache"))
    root = image_folder(tmp_path / "data", {"train": ["ant", "bee"], "val": ["ant"]})
    first = load_dataset(f"folder:{root}", "train", img_size=16)
    Image.new("RGB", (20, 20), (9, 9, 9)).save(root / "train" / "bee" / "new.png")
    second = load_dataset(f"folder:{root}", "train", img_size=16)
    assert len(first) == 4 and len(second) == 5
    assert first.fingerprint()["sha256"] != second.fingerprint()["sha256"]


# ----- 5. resume continues on the data it started on -------------------------------------------
def test_resume_on_other_data_is_refused_with_both_fingerprints(tmp_path):
    a, b = random_images(64, seed=0), random_images(64, seed=1)
    pretrain(SMALL, {**TRAIN, "max_steps": 1, "epochs": 2.0}, tmp_path, dataset=a, progress=False)
    with pytest.raises(CheckpointError, match=rf"trained on other data: checkpoint "
                                              rf"{a.fingerprint()['sha256']} .* vs now "
                                              rf"{b.fingerprint()['sha256']}"):
        pretrain(SMALL, {**TRAIN, "epochs": 2.0}, tmp_path, dataset=b, resume=True,
                 progress=False)


# ----- 6. non-finite weights never load ---------------------------------------------------------
def test_a_checkpoint_with_a_nan_tensor_is_refused_naming_it(tmp_path):
    state = MAE(SMALL).state_dict()
    state["encoder.blocks.0.mlp.fc1.weight"][0, 0] = float("nan")
    save_checkpoint(tmp_path / "checkpoint.pt", {"model": state, "config": {"model": SMALL}})
    with pytest.raises(CheckpointError, match=r"tensor encoder.blocks.0.mlp.fc1.weight holds 1 "
                                              r"NaN or infinite value"):
        load_checkpoint(tmp_path / "checkpoint.pt")
    with pytest.raises(ConversionError, match="encoder.blocks.0.mlp.fc1.weight holds 1 NaN"):
        load_weights(MAE(SMALL), state)
    probe = run_cli("probe", f"--checkpoint={tmp_path}")
    assert probe.returncode == 2 and "Traceback" not in probe.stderr
    assert "encoder.blocks.0.mlp.fc1.weight" in probe.stderr


# ----- 7. a mask ratio of 0 trains nothing ------------------------------------------------------
def test_mask_ratio_zero_is_refused_where_a_loss_is_needed():
    model = MAE({**SMALL, "mask_ratio": 0.0})
    images = torch.randn(2, 3, 32, 32)
    with pytest.raises(ConfigError, match=r"hides no patch.*model.features\(images\)"):
        model(images)
    with pytest.raises(ConfigError, match="hides no patch"):
        pretrain({**SMALL, "mask_ratio": 0.0}, TRAIN, dataset=random_images(64), progress=False)
    assert model.features(images).shape == (2, 65, 64)  # unmasked encoding still works


# ----- 8. what a run records is what it did -----------------------------------------------------
@pytest.mark.slow
def test_options_that_cannot_apply_are_refused(tmp_path):
    pretrain(SMALL, {**TRAIN, "max_steps": 1}, tmp_path, dataset=random_images(64), progress=False)
    for flags, used in ((["--set=encoder_dim=999"], "--set"), (["--preset=tiny"], "--preset"),
                        (["--init-seed=3"], "--init-seed")):
        run = run_cli("probe", f"--checkpoint={tmp_path}", *flags)
        assert run.returncode == 2 and f"error: {used} cannot apply with --checkpoint" in run.stderr
    few = (torch.randn(10, 8), torch.arange(10) % 2)
    with pytest.raises(ConfigError, match="knn_k 20 needs at least 20 training features, got 10"):
        knn_classify(few, few, 2)
    with pytest.raises(DataError, match=r"a subset of 100000 images .* it has 64"):
        random_images(64).subset(100000)
    run = run_cli("visualize", f"--checkpoint={tmp_path}", f"--out={tmp_path / 'foo'}")
    assert run.returncode == 2 and "names no image format" in run.stderr
    assert "foo.png" in run.stderr


# ----- 9. one rule for image size ---------------------------------------------------------------
def test_data_of_another_size_is_refused_not_resized():
    model = MAE(SMALL)  # 32 px
    with pytest.raises(DataError, match=r"images are 64 px but the model takes 32 px, so feature "
                                        r"extraction would have to resize them"):
        extract_features(model, random_images(4, size=64))


# ----- 11. a user's mistake is one line, not a traceback ----------------------------------------
@pytest.mark.parametrize("flags, message", [
    (["--device=tpu"], "unknown device 'tpu': use auto, cpu, cuda or cuda:N"),
    (["--device=cuda"], "CUDA is not available here") if not torch.cuda.is_available() else
    (["--device=cuda:99"], "GPU(s)"),
    (["--base-lr=nan"], "base_lr must be a finite number"),
    (["--beta1=2"], "beta1 must be a finite number in [0, 0.9999]"),
])
def test_cli_mistakes_end_in_one_line(tmp_path, flags, message):
    run = run_cli("pretrain", "--no-progress", f"--out={tmp_path / 'run'}", "--max-steps=1",
                  "--train-subset=64", "--batch-size=32", *flags,
                  env={**os.environ, "MAE_DATA": str(tmp_path / "nowhere")})
    assert run.returncode == 2, run.stderr[-2000:]
    assert "Traceback" not in run.stderr and message in run.stderr
    assert run.stderr.startswith("error: ") and run.stderr.count("\n") == 1


@pytest.mark.parametrize("dataset", ["cifar10", "imagenette"])
def test_download_without_a_network_is_one_line_naming_the_fix(tmp_path, dataset):
    """--download where nothing can be reached (a proxy on a closed port stands in for no network)."""
    closed = "http://127.0.0.1:9"
    run = run_cli("knn", f"--dataset={dataset}", f"--data-root={tmp_path}", "--download",
                  env={**os.environ, "http_proxy": closed, "https_proxy": closed,
                       "HTTP_PROXY": closed, "HTTPS_PROXY": closed, "no_proxy": ""})
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr[-2000:]
    assert f"cannot download {dataset} into {tmp_path}" in run.stderr
    assert "copy the dataset there by hand" in run.stderr


def test_an_output_that_cannot_be_written_fails_before_any_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    run = run_cli("pretrain", f"--out={blocker}", "--max-steps=1")
    assert run.returncode == 2 and "run folder" in run.stderr and "is a file" in run.stderr
    inside = run_cli("pretrain", f"--out={blocker / 'run'}", "--max-steps=1")
    assert inside.returncode == 2 and "cannot write to run folder" in inside.stderr
    assert not (tmp_path / "file.tmp").exists()


def test_debug_shows_the_traceback(tmp_path):
    run = run_cli("--debug", "pretrain", f"--out={tmp_path / 'run'}", "--device=tpu")
    assert run.returncode != 0 and "Traceback" in run.stderr


# ----- 13. leftovers are cleaned ----------------------------------------------------------------
def test_temporaries_of_dead_writers_are_removed_on_the_next_start(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = tmp_path / f".checkpoint.pt.tmp{dead}"
    stale.write_bytes(b"half a checkpoint")
    live = tmp_path / f".history.json.tmp{os.getpid()}"
    live.write_text("being written")
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert not stale.exists() and live.exists()
    stale.write_bytes(b"again")
    pretrain(SMALL, {**TRAIN, "max_steps": 1}, tmp_path, dataset=random_images(64),
             progress=False)
    assert not stale.exists() and json.loads((tmp_path / "pretrain_metrics.json").read_text())


# ----- 12. messages that point the right way ----------------------------------------------------
def test_a_batch_of_another_dtype_is_named_not_a_matmul_error():
    model = MAE(SMALL)
    for dtype in (torch.float64, torch.float16):
        with pytest.raises(ValueError, match=rf"images are {dtype} but the model's weights are "
                                             rf"torch.float32: convert the batch"):
            model(torch.randn(2, 3, 32, 32).to(dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision is not a mistake
        assert model(torch.randn(2, 3, 32, 32)).loss.isfinite()


# ----- 10. every model field checked ------------------------------------------------------------
@pytest.mark.parametrize("field, value, message", [
    ("mlp_ratio", float("inf"), "mlp_ratio must be a finite number in (0, 64]"),
    ("mlp_ratio", 0.001, "gives the encoder MLP no hidden unit"),
    ("encoder_dim", 1 << 20, "is beyond any ViT"),
    ("layer_norm_eps", float("nan"), "layer_norm_eps must be a finite number in (0, 1)"),
])
def test_model_fields_out_of_range_are_refused_by_name(field, value, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        MAE({**SMALL, field: value})
