"""File safety (mae.files): one run folder, one run; a full disk is one line and leaves nothing
half-written; every write of the package goes through one atomic writer."""

import ast
import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import SMALL
from mae import ConfigError
from mae.checkpoint import load_checkpoint, save_checkpoint
from mae.cli import main
from mae.files import DiskFullError, write_json_atomic
from mae.train import pretrain
from test_reliability import TRAIN, random_images, run_cli

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mae"


# ----- one run folder, one run ------------------------------------------------------------------
HOLDER = """
import sys
import torch
from mae.data import ImageDataset
from mae.train import pretrain
data = ImageDataset("synthetic", "train", torch.zeros(64, 3, 32, 32, dtype=torch.uint8),
                    torch.arange(64) % 2, ["a", "b"], (0.5,) * 3, (0.25,) * 3)
model = dict(img_size=32, patch_size=4, encoder_dim=64, encoder_layers=2, encoder_heads=4,
             decoder_dim=32, decoder_layers=1, decoder_heads=4)
pretrain(model, dict(batch_size=32, epochs=100000.0, num_threads=1, checkpoint_every=0),
         sys.argv[1], dataset=data, progress=False)
"""


@pytest.mark.slow
def test_a_second_pretrain_into_a_running_folder_fails_at_once_naming_the_first(tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], cwd=ROOT,
                             env={**os.environ, "OMP_NUM_THREADS": "1"},
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (out / ".lock").is_file() or not (out / ".lock").read_text():
            assert first.poll() is None, first.stderr.read()
            assert time.time() < deadline, "the first run never locked its folder"
            time.sleep(0.05)
        second = run_cli("pretrain", f"--out={out}", "--max-steps=1", "--resume")
        assert second.returncode == 2 and "Traceback" not in second.stderr
        assert second.stderr.count("\n") == 1, second.stderr
        assert f"error: {out} is in use by another pre-training (pid {first.pid} on" \
            in second.stderr
        with pytest.raises(ConfigError, match=f"in use by another pre-training \\(pid {first.pid}"):
            pretrain(SMALL, {**TRAIN, "max_steps": 1}, out, dataset=random_images(64),
                     resume=True, progress=False)
        assert not (out / "checkpoint.pt").exists()  # the second wrote nothing there
    finally:
        first.kill()
        first.wait()


def test_the_lock_is_released_when_a_run_ends_or_fails(tmp_path):
    pretrain(SMALL, {**TRAIN, "max_steps": 1}, tmp_path, dataset=random_images(64), progress=False)
    assert not (tmp_path / ".lock").exists()
    with pytest.raises(ConfigError, match="exceeds the 16 training images") as failed:
        pretrain(SMALL, {**TRAIN, "max_steps": 1}, tmp_path, dataset=random_images(16),
                 overwrite=True, progress=False)
    assert failed.value.__traceback__ is not None  # a held traceback (a notebook's) keeps no lock
    again = pretrain(SMALL, {**TRAIN, "max_steps": 2}, tmp_path, dataset=random_images(64),
                     resume=True, progress=False)
    assert again.metrics["steps"] == 2


def test_a_refused_run_removes_the_folders_it_created_and_only_those(tmp_path):
    with pytest.raises(ConfigError, match="exceeds the 16 training images"):
        pretrain(SMALL, {**TRAIN, "max_steps": 1}, tmp_path / "new" / "run",
                 dataset=random_images(16), progress=False)
    assert list(tmp_path.iterdir()) == []  # neither run/ nor new/ is left behind
    (tmp_path / "mine").mkdir()
    with pytest.raises(ConfigError, match="exceeds the 16 training images"):
        pretrain(SMALL, {**TRAIN, "max_steps": 1}, tmp_path / "mine" / "run",
                 dataset=random_images(16), progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["mine"] and not any((tmp_path / "mine")
                                                                         .iterdir())


# ----- a full disk --------------------------------------------------------------------------------
def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_during_a_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "checkpoint.pt", {"model": {"w": torch.ones(3)}, "step": 1})
    before = path.read_bytes()
    real_save = torch.save

    def save_half_then_fail(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        full_disk()

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(DiskFullError) as error:
        save_checkpoint(path, {"model": {"w": torch.zeros(3)}, "step": 2})
    assert error.value.errno == errno.ENOSPC and "\n" not in str(error.value)
    assert str(error.value).startswith(f"the disk is full: cannot write {path} (")
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint(path)["step"] == 1


def test_a_full_disk_is_one_line_from_the_cli_and_for_every_writer(tmp_path, monkeypatch, capsys):
    pretrain(SMALL, {**TRAIN, "max_steps": 1}, tmp_path / "run", dataset=random_images(64),
             progress=False)
    monkeypatch.setattr(os, "fsync", full_disk)  # the last step of every atomic write
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "out" / "m.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: the disk is full: cannot write {tmp_path / 'out' / 'm.pt'} (")
    assert err.count("\n") == 1 and not list((tmp_path / "out").iterdir())
    with pytest.raises(DiskFullError, match="the disk is full: cannot write .*record.json"):
        write_json_atomic(tmp_path / "record.json", {"a": 1})
    assert not list(tmp_path.glob(".record.json*")) and not (tmp_path / "record.json").exists()


# ----- one home for file safety -------------------------------------------------------------------
def calls_to(name: str) -> dict[str, int]:
    """The modules of mae that call ``os.<name>``, and how often."""
    found = {}
    for path in PACKAGE.glob("*.py"):
        count = sum(isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == name and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "os" for node in ast.walk(ast.parse(path.read_text())))
        if count:
            found[path.name] = count
    return found


def test_atomic_writes_and_the_checkpoint_name_have_one_home():
    assert calls_to("replace") == calls_to("fsync") == {"files.py": 1}
    literal = {path.name for path in PACKAGE.glob("*.py") for node in
               ast.walk(ast.parse(path.read_text()))
               if isinstance(node, ast.Constant) and node.value == "checkpoint.pt"}
    assert literal == {"checkpoint.py"}
    temporaries = {path.name for path in PACKAGE.glob("*.py") if ".tmp{" in path.read_text()}
    assert temporaries == {"files.py"}


def test_the_cache_folder_and_the_run_guard_have_one_home():
    trees = {path.name: ast.parse(path.read_text()) for path in PACKAGE.glob("*.py")}
    defined = [name for name, tree in trees.items() for node in ast.walk(tree)
               if isinstance(node, ast.FunctionDef) and node.name == "cache_dir"]
    assert defined == ["files.py"]
    docstrings = {id(node.body[0].value) for tree in trees.values() for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)}

    def saying(text: str) -> set[str]:
        """The modules with a string (a docstring aside) that holds ``text``."""
        return {name for name, tree in trees.items() for node in ast.walk(tree)
                if isinstance(node, ast.Constant) and isinstance(node.value, str)
                and text in node.value and id(node) not in docstrings}

    assert saying("already holds a run") == {"checkpoint.py"}  # refuse_existing_run
    assert saying("checkpoint.pt") == {"checkpoint.py"}  # CHECKPOINT; messages say {CHECKPOINT}
