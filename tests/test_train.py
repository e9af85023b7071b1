"""Pre-training engine: schedule, exact resume after SIGKILL, DDP equivalence, failures."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import SMALL, needs_cifar
from mae import ConfigError
from mae.checkpoint import CheckpointError, load_checkpoint
from mae.data import ImageDataset
from mae.recipe import TrainConfig
from mae.optim import lr_at
from mae.train import NonFiniteLossError, init_model, pretrain

ROOT = Path(__file__).resolve().parents[1]
MODEL_FLAGS = [f"--set={k}={v}" for k, v in SMALL.items()]
TRAIN = dict(dataset="cifar10", train_subset=512, epochs=1.5, batch_size=64, warmup_epochs=0.5,
             checkpoint_every=2, num_threads=1)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "mae", "pretrain", *MODEL_FLAGS, "--no-progress", *args]


def train_flags(**overrides) -> list[str]:
    return [f"--{k.replace('_', '-')}={v}" for k, v in {**TRAIN, **overrides}.items()]


def assert_same_training(a, b):
    """Two checkpoints of the same steps, one computed in one process and one with the batch
    split over 2 ranks: the gradients are summed in another order, so they agree to float32
    rounding, and so do the weights, except for coordinates whose gradient is near zero: AdamW
    moves each by about lr * g / (|g| + eps) per step, so there the order of summation can move
    it by up to that step's learning rate (on an Intel Xeon with AMX, 1 of 96 entries of one
    tensor by 1.1e-5). Such coordinates are allowed, few and within the summed learning rates;
    everything else, and every step's loss, within 1e-5."""
    budget = sum(h["lr"] for h in a["history"])
    for key in a["model"]:
        diff = (a["model"][key].float() - b["model"][key].float()).abs()
        assert diff.max().item() <= budget, (key, diff.max().item(), budget)
        assert (diff > 1e-5).float().mean().item() <= 0.02, (key, diff.max().item())
    for x, y in zip(a["history"], b["history"], strict=True):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-5)


def test_lr_schedule_warmup_then_cosine():
    lrs = [lr_at(s, 100, 10, 1.0, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[55] == pytest.approx(0.55)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] > 0.1 and lr_at(100, 100, 10, 1.0, 0.1) == pytest.approx(0.1)


def test_train_config_validation():
    with pytest.raises(ConfigError, match="batch_size 100 is not divisible by accum_steps 3"):
        TrainConfig(batch_size=100, accum_steps=3)
    with pytest.raises(ConfigError, match="Did you mean 'bf16'"):
        TrainConfig(precision="bf61")
    with pytest.raises(ConfigError, match="unknown TrainConfig key 'epoch'.*'epochs'"):
        TrainConfig.from_dict({"epoch": 3})


@needs_cifar
def test_loss_falls_and_run_is_reproducible(tmp_path):
    a = pretrain(SMALL, {**TRAIN, "epochs": 2.0}, tmp_path / "a", progress=False)
    losses = [h["loss"] for h in a.history]
    assert len(losses) == 16 and sum(losses[-4:]) < sum(losses[:4])
    b = pretrain(SMALL, {**TRAIN, "epochs": 2.0}, None, progress=False)
    assert [h["loss"] for h in b.history] == losses
    assert (tmp_path / "a" / "history.csv").read_text().count("\n") == 17
    assert a.metrics["data"]["sha256"] and a.metrics["data"]["num_images"] == 512
    written = json.loads((tmp_path / "a" / "pretrain_metrics.json").read_text())
    assert written == json.loads(json.dumps(a.metrics)) and written["steps"] == 16


@pytest.mark.slow
@needs_cifar
def test_sigkill_then_resume_is_bitwise_identical(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    full = tmp_path / "full"
    subprocess.run(cli(*train_flags(), f"--out={full}"), check=True, env=env,
                   capture_output=True, cwd=ROOT)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(cli(*train_flags(), f"--out={killed}"), env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until a checkpoint past step 4 exists, then kill
        history = killed / "history.json"
        if history.is_file() and len(json.loads(history.read_text())) >= 4:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    interrupted_at = load_checkpoint(killed / "checkpoint.pt")["step"]
    assert 4 <= interrupted_at < 12
    subprocess.run(cli(*train_flags(), f"--out={killed}", "--resume"), check=True, env=env,
                   capture_output=True, cwd=ROOT)
    a = load_checkpoint(full / "checkpoint.pt")
    b = load_checkpoint(killed / "checkpoint.pt")
    assert a["step"] == b["step"] == 12
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]


@pytest.mark.slow
@needs_cifar
def test_ddp_two_ranks_match_one_process(tmp_path):
    """torchrun, 2 CPU ranks (gloo), 32 images each == one process with 64 images."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    flags = train_flags(epochs=0.5, checkpoint_every=0)  # 4 steps
    single = tmp_path / "single"
    subprocess.run(cli(*flags, f"--out={single}"), check=True, env=env, capture_output=True,
                   cwd=ROOT)
    ddp = tmp_path / "ddp"
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "mae", "pretrain", *MODEL_FLAGS, "--no-progress", *flags, f"--out={ddp}"],
        env=env, capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    a = load_checkpoint(single / "checkpoint.pt")
    b = load_checkpoint(ddp / "checkpoint.pt")
    assert a["step"] == b["step"] == 4
    assert_same_training(a, b)
    metrics = json.loads((ddp / "pretrain_metrics.json").read_text())
    assert metrics["world_size"] == 2


@pytest.mark.slow
@needs_cifar
def test_batch_not_divisible_across_ranks(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "mae", "pretrain", *MODEL_FLAGS, "--no-progress",
         *train_flags(batch_size=63, accum_steps=1), f"--out={tmp_path}"],
        env=env, capture_output=True, text=True, cwd=ROOT)
    assert run.returncode != 0
    assert "63 images per micro-batch cannot be split evenly over 2 ranks" in run.stderr


@needs_cifar
def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, cifar_train):
    data = cifar_train.subset(512)
    pretrain(SMALL, {**TRAIN, "max_steps": 4}, tmp_path, dataset=data, progress=False)
    good = load_checkpoint(tmp_path / "checkpoint.pt")
    poisoned = ImageDataset("poisoned", "train", torch.full((512, 3, 32, 32), float("nan")),
                            data.labels, data.classes, data.mean, data.std)
    # The checkpoint is told the poisoned images are its own (resuming on other data is refused).
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    ckpt["data"] = poisoned.fingerprint()
    torch.save(ckpt, tmp_path / "checkpoint.pt")
    good = load_checkpoint(tmp_path / "checkpoint.pt")
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at step 4 .*last good checkpoint"):
        pretrain(SMALL, TRAIN, tmp_path, resume=True, dataset=poisoned, progress=False)
    after = load_checkpoint(tmp_path / "checkpoint.pt")
    assert after["step"] == good["step"] == 4
    for key in good["model"]:
        assert torch.equal(good["model"][key], after["model"][key])


@needs_cifar
def test_resume_with_another_config_is_refused(tmp_path, cifar_train):
    data = cifar_train.subset(512)
    pretrain(SMALL, {**TRAIN, "max_steps": 2}, tmp_path, dataset=data, progress=False)
    with pytest.raises(CheckpointError, match=r"differing keys: mask_ratio: checkpoint 0.75 vs "
                                              r"requested 0.5"):
        pretrain({**SMALL, "mask_ratio": 0.5}, TRAIN, tmp_path, resume=True, dataset=data,
                 progress=False)
    with pytest.raises(CheckpointError, match=r"base_lr: checkpoint 0.001 vs requested 0.002"):
        pretrain(SMALL, {**TRAIN, "base_lr": 2e-3}, tmp_path, resume=True, dataset=data,
                 progress=False)
    with pytest.raises(CheckpointError, match=r"cls_token: checkpoint True vs requested False"):
        pretrain({**SMALL, "cls_token": False}, TRAIN, tmp_path, resume=True, dataset=data,
                 progress=False)


@needs_cifar
def test_checkpoint_from_before_an_option_existed_resumes_with_its_default(tmp_path, cifar_train):
    """A key missing from an older checkpoint's config means that option's default."""
    data = cifar_train.subset(512)
    pretrain(SMALL, {**TRAIN, "max_steps": 2}, tmp_path, dataset=data, progress=False)
    path = tmp_path / "checkpoint.pt"
    ckpt = torch.load(path, weights_only=True)
    del ckpt["config"]["model"]["cls_token"]
    torch.save(ckpt, path)
    out = pretrain(SMALL, {**TRAIN, "max_steps": 3}, tmp_path, resume=True, dataset=data,
                   progress=False)
    assert out.metrics["steps"] == 3
    with pytest.raises(CheckpointError, match=r"cls_token: checkpoint True vs requested False"):
        pretrain({**SMALL, "cls_token": False}, TRAIN, tmp_path, resume=True, dataset=data,
                 progress=False)


@needs_cifar
def test_gradient_accumulation_matches_one_big_batch(cifar_train):
    data = cifar_train.subset(512)
    a = pretrain(SMALL, {**TRAIN, "max_steps": 3, "checkpoint_every": 0}, dataset=data,
                 progress=False).model
    b = pretrain(SMALL, {**TRAIN, "max_steps": 3, "checkpoint_every": 0, "accum_steps": 4},
                 dataset=data, progress=False).model
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-5, msg=name)


@needs_cifar
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_paths_run_on_cpu(cifar_train, precision):
    """The GPU precision code paths (autocast, and a GradScaler for fp16), exercised on CPU."""
    result = pretrain(SMALL, {**TRAIN, "max_steps": 2, "precision": precision},
                      dataset=cifar_train.subset(512), progress=False)
    assert result.metrics["precision"] == (
        f"torch.{'bfloat16' if precision == 'bf16' else 'float16'}")
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history)


def test_init_model_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    a = init_model(SMALL, 3)
    assert torch.equal(torch.get_rng_state(), state)
    b = init_model(SMALL, 3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                 b.state_dict().values()))


@needs_cifar
def test_pretrain_does_not_change_the_callers_dataset(cifar_train):
    data = cifar_train.subset(512)
    images = data.images
    moved = data.to("cpu")
    assert moved is not data and data.images is images
    pretrain(SMALL, {**TRAIN, "max_steps": 1}, dataset=data, progress=False)
    assert data.images is images and len(data) == 512


@pytest.mark.slow
@needs_cifar
def test_a_config_file_runs_what_the_flags_run(tmp_path):
    """--config (what the ablation runner hands torchrun) trains the same model as the flags."""
    flags = train_flags(max_steps=2, checkpoint_every=0)
    subprocess.run(cli(*flags, f"--out={tmp_path / 'flags'}"), check=True, capture_output=True,
                   cwd=ROOT)
    configs = load_checkpoint(tmp_path / "flags" / "checkpoint.pt")["config"]
    (tmp_path / "run.json").write_text(json.dumps(configs))
    run = subprocess.run([sys.executable, "-m", "mae", "pretrain", "--no-progress",
                          f"--config={tmp_path / 'run.json'}", f"--out={tmp_path / 'file'}"],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    a = load_checkpoint(tmp_path / "flags" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "file" / "checkpoint.pt")
    assert a["config"] == b["config"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    both = subprocess.run([sys.executable, "-m", "mae", "pretrain", "--preset=micro",
                           f"--config={tmp_path / 'run.json'}", f"--out={tmp_path / 'x'}"],
                          capture_output=True, text=True, cwd=ROOT)
    assert both.returncode == 2 and "give one of them" in both.stderr


def _scalars(folder: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder)).Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


@needs_cifar
def test_tensorboard_logs_what_the_history_records_and_resume_logs_each_step_once(
        tmp_path, cifar_train):
    pytest.importorskip("tensorboard")
    data = cifar_train.subset(512)
    run = pretrain(SMALL, {**TRAIN, "max_steps": 3, "tensorboard": True}, tmp_path, dataset=data,
                   progress=False)
    for tag in ("loss", "lr", "images_per_s"):
        logged = _scalars(tmp_path / "tensorboard", f"pretrain/{tag}")
        assert [s for s, _ in logged] == [1, 2, 3]
        assert [v for _, v in logged] == pytest.approx([h[tag] for h in run.history], rel=1e-6)
    # A stopped run had logged steps 3 and 4 past its step-2 checkpoint; the resumed run logs
    # them again, and the reader keeps only the resumed run's values.
    from mae.board import tensorboard_writer

    other = tmp_path / "other"
    first = tensorboard_writer(other, 0)
    for step in (1, 2, 3, 4):
        first.add_scalar("pretrain/loss", 10.0 + step, step)
    first.close()
    time.sleep(1.1)  # event files are named by the second they are opened
    again = tensorboard_writer(other, 2)
    for step in (3, 4, 5):
        again.add_scalar("pretrain/loss", 20.0 + step, step)
    again.close()
    assert _scalars(other / "tensorboard", "pretrain/loss") == [(1, 11.0), (2, 12.0), (3, 23.0), (4, 24.0),
                                               (5, 25.0)]


def test_tensorboard_without_the_package_or_a_folder_is_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="needs a run folder"):
        pretrain(SMALL, {**TRAIN, "tensorboard": True}, None, progress=False)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(ConfigError, match=r"pip install 'mae\[tensorboard\]'"):
        pretrain(SMALL, {**TRAIN, "tensorboard": True}, tmp_path, progress=False)
    assert not any(tmp_path.iterdir())  # refused before anything was written


@needs_cifar
def test_snapshots_keep_the_model_at_the_chosen_epochs(tmp_path, cifar_train):
    """snapshot_epochs: the model alone at those epochs, loadable as a pre-trained MAE; the last
    one is the final model. A list outside the schedule is refused before training."""
    from mae.checkpoint import load_pretrained

    data = cifar_train.subset(512)  # 8 steps an epoch at batch 64
    run = pretrain(SMALL, {**TRAIN, "epochs": 1.0, "snapshot_epochs": "0.25,1"}, tmp_path,
                   dataset=data, progress=False)
    assert sorted(p.name for p in tmp_path.glob("snapshot-*.pt")) == [
        "snapshot-epoch0.25.pt", "snapshot-epoch1.pt"]
    early, configs = load_pretrained(tmp_path / "snapshot-epoch0.25.pt")
    assert load_checkpoint(tmp_path / "snapshot-epoch0.25.pt")["step"] == 2
    final, _ = load_pretrained(tmp_path / "snapshot-epoch1.pt")
    assert configs["train"]["snapshot_epochs"] == "0.25,1"
    for name, value in run.model.state_dict().items():
        assert torch.equal(final.state_dict()[name], value), name
    assert not torch.equal(early.state_dict()["encoder.norm.weight"],
                           final.state_dict()["encoder.norm.weight"])
    for bad, message in (("25", "outside the schedule"), ("a,b", "comma-separated list")):
        with pytest.raises(ConfigError, match=message):
            TrainConfig(epochs=1.0, snapshot_epochs=bad)


def test_a_resumed_run_records_the_time_of_its_earlier_attempts(tmp_path):
    """pretrain_metrics.json of a resumed run: wall and CPU time include what the checkpoint
    carried from before the stop, and say how much that was (ablation.ipynb adds it to the
    point's own clocks, which start at the resume)."""
    from mae.checkpoint import load_checkpoint, save_checkpoint
    from mae.data import ImageDataset
    from mae.train import pretrain

    images = torch.randint(0, 256, (32, 3, 16, 16), generator=torch.Generator().manual_seed(0),
                           dtype=torch.uint8)
    data = ImageDataset("synthetic", "train", images, torch.arange(32) % 4, ["a", "b", "c", "d"],
                        (0.5,) * 3, (0.25,) * 3)
    config = {"img_size": 16, "patch_size": 4, "encoder_dim": 32, "encoder_layers": 1,
              "encoder_heads": 2, "decoder_dim": 16, "decoder_layers": 1, "decoder_heads": 2}
    recipe = {"epochs": 2, "batch_size": 16, "max_steps": 1, "precision": "fp32"}
    first = pretrain(config, recipe, tmp_path, dataset=data, progress=False, log=lambda _: None)
    assert first.metrics["earlier_wall_time_s"] == first.metrics["earlier_cpu_time_s"] == 0
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")  # as if the first attempt had run an hour
    save_checkpoint(tmp_path / "checkpoint.pt", {**ckpt, "wall_time": 3600.0, "cpu_time": 7000.0})
    again = pretrain(config, {**recipe, "max_steps": 2}, tmp_path, resume=True, dataset=data,
                     progress=False, log=lambda _: None).metrics
    assert (again["earlier_wall_time_s"], again["earlier_cpu_time_s"]) == (3600.0, 7000.0)
    assert 3600 < again["wall_time_s"] < 3700 and 7000 < again["cpu_time_s"] < 7100
