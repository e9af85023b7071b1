import dataclasses
import subprocess
import sys
from pathlib import Path

from conftest import SMALL, needs_cifar
from mae.cli import build_parser
from mae.commands import parse_overrides
from mae.recipe import EvalConfig, TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def run(*args):
    return subprocess.run([sys.executable, "-m", "mae", *args], capture_output=True, text=True,
                          cwd=ROOT)


def test_help_lists_every_option():
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices
    assert set(sub) == {"pretrain", "probe", "knn", "finetune", "visualize", "ablate", "report"}
    pretrain_help = sub["pretrain"].format_help()
    for f in dataclasses.fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in pretrain_help, f.name
    for f in dataclasses.fields(EvalConfig):
        assert "--" + f.name.replace("_", "-") in sub["finetune"].format_help(), f.name


def test_overrides_are_typed():
    assert parse_overrides(["mask_ratio=0.5", "norm_pix_loss=false", "patch_size=8",
                            "mask_sampling=grid"]) == {
        "mask_ratio": 0.5, "norm_pix_loss": False, "patch_size": 8, "mask_sampling": "grid"}


def test_bad_override_fails_cleanly(tmp_path):
    result = run("pretrain", "--out", str(tmp_path), "--set", "mask_ration=0.5")
    assert result.returncode == 2
    assert "error: unknown MAEConfig key 'mask_ration'. Did you mean 'mask_ratio'?" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_dataset_fails_cleanly(tmp_path):
    result = run("pretrain", "--out", str(tmp_path), "--dataset", "cifar-10")
    assert result.returncode == 2 and "Did you mean 'cifar10'" in result.stderr


@needs_cifar
def test_pretrain_then_visualize(tmp_path):
    flags = [f"--set={k}={v}" for k, v in SMALL.items()]
    result = run("pretrain", *flags, "--train-subset=256", "--batch-size=64", "--epochs=0.5",
                 "--no-progress", f"--out={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "run" / "pretrain_metrics.json").is_file()
    out = tmp_path / "rec.png"
    result = run("visualize", f"--checkpoint={tmp_path / 'run'}", f"--out={out}", "--num=2")
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:4] == b"\x89PNG"
