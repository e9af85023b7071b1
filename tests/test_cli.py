import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mae.commands
import mae.evaluate
from conftest import SMALL, needs_cifar
from mae import pretrained
from mae.cli import build_parser, main
from mae.data import ImageDataset
from mae.flags import EVAL_FIELDS, eval_fields, parse_overrides
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
    for f in dataclasses.fields(EvalConfig):  # each by the commands that use it, and only those
        flag = "--" + f.name.replace("_", "-") + " "
        offered = {c for c in ("probe", "knn", "frozen", "finetune")
                   if flag in sub[c].format_help()}
        assert offered == {c for c in EVAL_FIELDS if f.name in eval_fields(c)} != set(), f.name
    assert "--ft-epochs" not in sub["probe"].format_help()
    assert "--probe-lr" not in sub["finetune"].format_help()


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


@pytest.mark.slow
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


@pytest.mark.slow
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


# ----- one-line errors: flags a command does not use, and what cannot run -----------------------
def one_line_error(capsys, argv: list[str]) -> str:
    """Run ``python -m mae argv`` in this process; it must fail with exit status 2 and one line
    ``error: ...`` (argparse's usage lines before it allowed), no traceback."""
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert "error: " in last, err
    return last


@pytest.mark.parametrize("argv, message", [
    (["probe", "--ft-epochs", "3"], "--ft-epochs is an option of finetune; probe does not use"),
    (["knn", "--seed", "1"], "--seed is an option of probe, frozen, finetune; knn does not use"),
    (["knn", "--probe-lr=0.1"], "--probe-lr is an option of probe, frozen; knn does not use"),
    (["finetune", "--features", "mean"], "--features is an option of probe, knn, frozen;"),
    (["export", "--list", "runs/x", "--out", "x.pt"], "--list only lists the registered models"),
    (["pretrain", "--out", "x", "--executor", "slurm", "--download"],
     "--download does not reach a SLURM job"),
    (["visualize", "--checkpoint", "x", "--out", "v.png", "--num", "65"], "--num must be 1 to 64"),
])
def test_a_command_refuses_flags_it_would_ignore(capsys, argv, message):
    assert message in one_line_error(capsys, argv)


def tiny_set(n: int, split: str) -> ImageDataset:
    g = torch.Generator().manual_seed(n)
    return ImageDataset("synthetic", split, torch.randint(0, 256, (n, 3, 32, 32), generator=g,
                                                          dtype=torch.uint8),
                        torch.arange(n) % 2, ["a", "b"], (0.5,) * 3, (0.25,) * 3)


@pytest.mark.parametrize("command, flags, n, message", [
    ("frozen", ["--knn-k", "50"], 10, "knn_k 50 needs at least 50 training features, got 10"),
    ("knn", ["--knn-k", "11"], 10, "knn_k 11 needs at least 11"),
    ("probe", [], 1, "batches of at least 2 images (its BatchNorm"),
    ("probe", ["--probe-batch-size", "1"], 10, "got probe_batch_size 1 with 10 training"),
    ("frozen", ["--set", "cls_token=false"], 10, "--features mean on the command line"),
])
def test_frozen_evaluations_refuse_what_cannot_run_before_extracting_features(
        monkeypatch, capsys, command, flags, n, message):
    def never(*args, **kwargs):
        raise AssertionError("features were extracted")

    monkeypatch.setattr(mae.evaluate, "extract_features", never)
    monkeypatch.setattr(mae.commands, "datasets_for", lambda args, train, size: (
        tiny_set(n, "train"), tiny_set(4, "test")))
    small = [f"--set={k}={v}" for k, v in SMALL.items()]
    assert message in one_line_error(capsys, [command, *small, *flags, "--no-progress"])


def test_a_refused_pretrain_leaves_no_new_folder_behind(tmp_path, capsys):
    out = tmp_path / "new" / "run"
    one_line_error(capsys, ["pretrain", f"--out={out}", "--train-subset=64", "--no-progress",
                            f"--data-root={tmp_path / 'no-data'}"])
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()  # a folder that was there before stays
    one_line_error(capsys, ["pretrain", f"--out={tmp_path / 'kept'}", "--no-progress",
                            f"--data-root={tmp_path / 'no-data'}"])
    assert (tmp_path / "kept").is_dir()


@pytest.mark.parametrize("env, message", [
    ({"MAE_CHECKPOINT_URL": "not a url"}, "MAE_CHECKPOINT_URL 'not a url' is not a URL"),
    ({"MAE_CHECKPOINT_URL": "htp:/x"}, "MAE_CHECKPOINT_URL 'htp:/x' is not a URL"),
    ({"MAE_CACHE": "{tmp}/a-file/cache"}, "download cache folder ($MAE_CACHE) {tmp}/a-file/cache"),
])
def test_a_bad_download_setting_is_one_line(tmp_path, monkeypatch, capsys, env, message):
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setitem(pretrained.REGISTRY, "tiny",
                        pretrained.Entry("tiny", "tiny.pt", "0" * 64, "test"))
    monkeypatch.setattr(pretrained, "checkout_dir", lambda: tmp_path / "no-checkout")
    monkeypatch.setenv("MAE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MAE_CHECKPOINT_URL", "http://127.0.0.1:9/")
    for key, value in env.items():
        monkeypatch.setenv(key, value.format(tmp=tmp_path))
    assert message.format(tmp=tmp_path) in one_line_error(capsys, ["probe", "--checkpoint",
                                                                   "tiny"])
