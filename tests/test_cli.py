import dataclasses
import json
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
    assert set(sub) == {"pretrain", "probe", "knn", "frozen", "finetune", "visualize",
                        "export", "ablate", "report"}
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


@needs_cifar
def test_frozen_scores_probe_and_knn_on_one_extraction_of_subsets(tmp_path):
    flags = [f"--set={k}={v}" for k, v in SMALL.items()]
    out = tmp_path / "frozen.json"
    result = run("frozen", *flags, "--init-seed=3", "--train-subset=600", "--test-subset=200",
                 "--probe-epochs=2", "--no-progress", f"--out={out}")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(out.read_text())
    assert {"probe_top1", "knn_top1"} <= set(metrics) and metrics["checkpoint"] == "random-init"
    assert metrics["data"]["split"] == "train[:600]" and metrics["data"]["num_images"] == 600
    assert metrics["time"]["cpu_time_s"] > 0 and "git_commit" in metrics["provenance"]
    assert metrics["pretrain_steps"] == 0
    bad = run("frozen", *flags, "--test-subset=-1")
    assert bad.returncode == 2 and "--test-subset must be 0" in bad.stderr


def test_every_error_of_mae_is_an_maeerror_that_main_prints_as_one_line(monkeypatch, capsys):
    import importlib
    import pkgutil

    import mae
    from mae import cli
    from mae.config import MAEError

    errors = {}
    for module in pkgutil.iter_modules(mae.__path__):
        if module.name != "__main__":
            m = importlib.import_module(f"mae.{module.name}")
            errors.update({c.__name__: c for c in vars(m).values() if isinstance(c, type)
                           and issubclass(c, BaseException) and c.__module__ == m.__name__})
    assert {"ConfigError", "DataError", "CheckpointError", "ConversionError",
            "NonFiniteLossError", "JobError", "DiskFullError"} <= set(errors)
    assert [n for n, c in errors.items() if not issubclass(c, MAEError)] == []
    assert issubclass(errors["ConfigError"], ValueError) and issubclass(errors["DiskFullError"],
                                                                        OSError)

    class NewError(MAEError):
        pass

    def fail(args):
        raise NewError("something was wrong: do this instead")

    monkeypatch.setattr(cli, "cmd_report", fail)
    assert cli.main(["report"]) == 2
    assert capsys.readouterr().err == "error: something was wrong: do this instead\n"
