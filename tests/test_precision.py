"""Where evaluation runs and in which precision: the device flag reaches the model and its batches,
autocast follows one policy (`mae.runtime.autocast_dtype`) in pre-training, feature extraction and
fine-tuning, a run resumes in the precision it ran in, and fine-tuning crops as the official code."""

from __future__ import annotations

import json

import pytest
import torch

import mae.commands
import mae.evaluate
import mae.finetune
import mae.runtime
from mae.cli import main
from mae.data import ImageDataset
from mae.runtime import CPU_BF16_MIN_WIDTH, autocast_dtype, cpu_has_native_bf16

CPU = torch.device("cpu")
WIDE = ["--preset", "micro", "--set", f"encoder_dim={CPU_BF16_MIN_WIDTH}", "--set",
        "encoder_heads=4", "--set", "encoder_layers=1"]


def synthetic(n: int, split: str, size: int = 32) -> ImageDataset:
    g = torch.Generator().manual_seed(len(split))
    return ImageDataset("synthetic", split, torch.randint(0, 256, (n, 3, size, size), generator=g,
                                                          dtype=torch.uint8),
                        torch.arange(n) % 4, ["a", "b", "c", "d"], (0.5,) * 3, (0.25,) * 3)


def test_auto_is_bf16_on_a_cpu_only_where_native_and_wide_enough(monkeypatch):
    monkeypatch.setenv("MAE_CPU_BF16", "1")
    assert autocast_dtype("auto", CPU, CPU_BF16_MIN_WIDTH) is torch.bfloat16
    assert autocast_dtype("auto", CPU, CPU_BF16_MIN_WIDTH - 64) is None  # micro: slower in bf16
    assert autocast_dtype("auto", CPU) is None  # no width given: float32
    monkeypatch.setenv("MAE_CPU_BF16", "0")  # emulated bf16: many times slower, never auto
    assert autocast_dtype("auto", CPU, 4096) is None
    assert autocast_dtype("bf16", CPU, 64) is torch.bfloat16  # asked for: as named
    assert autocast_dtype("fp32", CPU, 4096) is None
    monkeypatch.delenv("MAE_CPU_BF16")
    assert isinstance(cpu_has_native_bf16(), bool)


def test_native_bf16_is_read_from_the_cpu_flags(monkeypatch, tmp_path):
    import builtins

    real_open = builtins.open
    for flags, native in (("fpu avx512f avx512_bf16 sse", True), ("fpu amx_bf16", True),
                          ("fpu avx512f avx2", False)):
        info = tmp_path / "cpuinfo"
        info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        monkeypatch.setattr(builtins, "open", lambda path, *a, **k: real_open(
            info if path == "/proc/cpuinfo" else path, *a, **k))
        assert cpu_has_native_bf16() is native
        monkeypatch.setattr(builtins, "open", real_open)


@pytest.fixture
def spied(monkeypatch):
    """pick_device records the name it was given (and answers with the CPU, the only device
    here); extract_features records the model's device and the autocast dtype it got."""
    seen = {"devices": [], "features": []}
    real_pick = mae.runtime.pick_device

    def pick(name="auto"):
        seen["devices"].append(name)
        return real_pick("cpu")

    def features(model, data, pool, batch_size, amp=None, progress=False):
        seen["features"].append((next(model.parameters()).device, amp))
        n = len(data)
        return torch.randn(n, model.config.encoder_dim), data.labels

    monkeypatch.setattr(mae.runtime, "pick_device", pick)
    monkeypatch.setattr(mae.evaluate, "extract_features", features)
    monkeypatch.setattr(mae.commands, "datasets_for", lambda args, train, size: (
        synthetic(64, "train"), synthetic(32, "test")))
    return seen


@pytest.mark.parametrize("native, precision, want", [
    ("1", "auto", torch.bfloat16), ("0", "auto", None), ("1", "fp32", None),
    ("0", "bf16", torch.bfloat16)])
def test_frozen_puts_the_model_on_the_device_and_follows_the_policy(
        spied, monkeypatch, tmp_path, capsys, native, precision, want):
    monkeypatch.setenv("MAE_CPU_BF16", native)
    monkeypatch.setattr(mae.runtime, "_warned_emulated_bf16", False)
    out = tmp_path / "m.json"
    assert main(["frozen", *WIDE, "--device", "cuda:1", "--precision", precision,
                 "--probe-epochs", "1", "--knn-k", "5", "--out", str(out), "--no-progress"]) == 0
    assert spied["devices"] == ["cuda:1"]
    assert spied["features"] == [(CPU, want), (CPU, want)]  # train and test features
    record = json.loads(out.read_text())
    assert record["device"] == "cpu" and record["eval"]["device"] == "cuda:1"
    assert record["precision"] == {None: "fp32", torch.bfloat16: "bf16"}[want]
    err = capsys.readouterr().err  # bf16 asked for where it is emulated: one line of advice
    warned = [line for line in err.splitlines() if "without native bf16" in line]
    if (native, precision) == ("0", "bf16"):
        assert warned == ["warning: bf16 on a CPU without native bf16 (no avx512_bf16 or amx_bf16 "
                          "flag): torch emulates it, many times slower than float32; use "
                          "--precision fp32 (or auto) on this machine"]
    else:
        assert warned == []


def test_finetune_runs_on_the_device_with_the_policy_and_the_official_crop(
        spied, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("MAE_CPU_BF16", "1")
    calls = {"boxes": [], "modes": [], "autocast": []}
    real_boxes, real_augment, real_autocast = (mae.finetune.crop_boxes, mae.finetune.augment,
                                               mae.finetune.autocast)

    def boxes(*args, scale=(0.2, 1.0), **kwargs):
        calls["boxes"].append(scale)
        return real_boxes(*args, scale=scale, **kwargs)

    def augment(*args, mode="bilinear", **kwargs):
        calls["modes"].append(mode)
        return real_augment(*args, mode=mode, **kwargs)

    def autocast(device, dtype):
        calls["autocast"].append((device, dtype))
        return real_autocast(device, dtype)

    monkeypatch.setattr(mae.finetune, "crop_boxes", boxes)
    monkeypatch.setattr(mae.finetune, "augment", augment)
    monkeypatch.setattr(mae.finetune, "autocast", autocast)
    out = tmp_path / "ft.json"
    assert main(["finetune", *WIDE, "--device", "cuda", "--ft-epochs", "1", "--ft-batch-size",
                 "32", "--out", str(out), "--no-progress"]) == 0
    assert spied["devices"] == ["cuda"]
    assert calls["boxes"] == [(0.08, 1.0)] * 2 and calls["modes"] == ["bicubic"] * 2
    assert set(calls["autocast"]) == {(CPU, torch.bfloat16)}  # training and test batches
    record = json.loads(out.read_text())
    assert record["finetune_device"] == "cpu" and record["finetune_precision"] == "bf16"
    capsys.readouterr()


def test_bicubic_crops_stay_in_the_pixel_range_and_match_bilinear_on_smooth_images():
    from mae.augment import augment

    ramp = torch.linspace(0, 255, 32).round().to(torch.uint8).expand(2, 3, 32, 32).contiguous()
    noisy = torch.randint(0, 256, (2, 3, 32, 32), generator=torch.Generator().manual_seed(0),
                          dtype=torch.uint8)
    boxes = torch.tensor([[4.0, 4.0, 20.0, 24.0], [0.0, 0.0, 32.0, 32.0]])
    flips = torch.tensor([False, True])
    mean, std = (0.5,) * 3, (0.25,) * 3
    low, high = (0 - 0.5) / 0.25, (1 - 0.5) / 0.25
    cubic = augment(noisy, 48, boxes, flips, mean, std, mode="bicubic")
    assert cubic.min() >= low and cubic.max() <= high  # overshoot clipped as uint8 would be
    a = augment(ramp, 48, boxes, flips, mean, std, mode="bicubic")
    b = augment(ramp, 48, boxes, flips, mean, std)
    assert (a - b).abs().max() < 0.05  # a linear ramp: both interpolations agree


def test_a_run_resumes_only_in_the_precision_it_ran_in(monkeypatch, tmp_path):
    from mae.checkpoint import CheckpointError
    from mae.train import pretrain

    config = {"img_size": 16, "patch_size": 4, "encoder_dim": CPU_BF16_MIN_WIDTH,
              "encoder_layers": 1, "encoder_heads": 4, "decoder_dim": 16, "decoder_layers": 1,
              "decoder_heads": 2}
    recipe = {"epochs": 2, "batch_size": 16, "max_steps": 1, "precision": "auto"}
    data = synthetic(32, "train", 16)
    monkeypatch.setenv("MAE_CPU_BF16", "1")  # auto resolves to bf16 on this "CPU"
    first = pretrain(config, recipe, tmp_path, dataset=data, progress=False, log=lambda _: None)
    assert first.metrics["precision"] == "torch.bfloat16"
    monkeypatch.setenv("MAE_CPU_BF16", "0")  # the same command on a CPU without native bf16
    with pytest.raises(CheckpointError, match="trained in bf16, but precision 'auto' runs fp32 "
                                              "here: resume with --precision bf16"):
        pretrain(config, {**recipe, "max_steps": 2}, tmp_path, resume=True, dataset=data,
                 progress=False, log=lambda _: None)
    again = pretrain(config, {**recipe, "max_steps": 2, "precision": "bf16"}, tmp_path,
                     resume=True, dataset=data, progress=False, log=lambda _: None)
    assert again.metrics["steps"] == 2 and again.metrics["resumed_at_step"] == 1
