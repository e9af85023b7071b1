"""Trained models by name: export, the committed files, the download path (a local HTTP server)."""

import contextlib
import functools
import http.server
import json
import threading
from pathlib import Path

import pytest
import torch

from conftest import SMALL, needs_cifar
from mae import pretrained
from mae.checkpoint import CheckpointError, load_checkpoint
from mae.cli import main
from mae.config import ConfigError
from mae.data import ImageDataset
from mae.train import pretrain

TRAIN = dict(dataset="synthetic", epochs=1.0, batch_size=32, warmup_epochs=0.0,
             checkpoint_every=0, num_threads=1)


def random_images():
    g = torch.Generator().manual_seed(0)
    return ImageDataset("synthetic", "train", torch.randint(0, 256, (64, 3, 32, 32), generator=g,
                                                            dtype=torch.uint8),
                        torch.arange(64) % 2, ["a", "b"], (0.5,) * 3, (0.25,) * 3)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A 2-step run on random images, exported; returns (folder, record)."""
    root = tmp_path_factory.mktemp("exported")
    pretrain(SMALL, TRAIN, root / "run", dataset=random_images(), progress=False)
    record = pretrained.export(root / "run", root / "files" / "tiny.pt")
    return root, record


def test_export_keeps_weights_and_record_drops_optimizer(exported):
    root, record = exported
    ckpt = load_checkpoint(root / "files" / "tiny.pt")
    run = load_checkpoint(root / "run" / "checkpoint.pt")
    assert "optimizer" not in ckpt and set(ckpt["model"]) == set(run["model"])
    assert all(torch.equal(ckpt["model"][k], run["model"][k]) for k in run["model"])
    assert record["sha256"] == pretrained.sha256(root / "files" / "tiny.pt")
    assert record["step"] == 2 and record["pretrain"]["steps"] == 2
    assert record["pretrain"]["cpu_time_s"] > 0 and "git_commit" in record["pretrain"]["provenance"]
    assert record["bytes"] < (root / "run" / "checkpoint.pt").stat().st_size / 2
    assert ckpt["pretrain"] == record["pretrain"]
    assert [e["epoch"] for e in ckpt["epoch_loss"]] == [1]
    assert ckpt["epoch_loss"][0]["loss"] == pytest.approx(
        sum(h["loss"] for h in run["history"]) / 2)
    assert json.loads((root / "files" / "tiny.json").read_text()) == record
    # no path of the machine that trained it: the run folder by its name
    assert str(root) not in json.dumps(record) and str(root) not in json.dumps(ckpt["pretrain"])
    assert record["pretrain"]["checkpoint"] == "run/checkpoint.pt"
    with pytest.raises(ConfigError, match="tiny.pt and .*tiny.json already exist: pass "
                                          "--overwrite"):
        pretrained.export(root / "run", root / "files" / "tiny.pt")
    with pytest.raises(CheckpointError, match="not a pre-training checkpoint"):
        pretrained.export(root / "files" / "tiny.pt", root / "files" / "again.pt")


def test_export_takes_the_record_of_the_checkpoints_own_step(tmp_path, capsys):
    run = tmp_path / "run"
    pretrain(SMALL, {**TRAIN, "max_steps": 1}, run, dataset=random_images(), progress=False)
    first = (run / "pretrain_metrics.json").read_text()
    pretrain(SMALL, {**TRAIN, "max_steps": 2}, run, resume=True, dataset=random_images(),
             progress=False)
    (run / "pretrain_metrics.json").write_text(first)  # stopped before it wrote its own record
    assert main(["export", str(run), "--out", str(tmp_path / "m.pt")]) == 0
    assert "note: the run stopped at step 2 before it wrote its record (pretrain_metrics.json " \
           "records step 1)" in capsys.readouterr().out
    record = json.loads((tmp_path / "m.json").read_text())
    ckpt = load_checkpoint(run / "checkpoint.pt")
    assert record["step"] == record["pretrain"]["steps"] == 2
    assert record["pretrain"]["wall_time_s"] == ckpt["wall_time"]
    assert record["pretrain"]["epochs"] == 1
    assert load_checkpoint(tmp_path / "m.pt")["pretrain"] == record["pretrain"]


def test_export_replaces_a_file_or_its_record_only_with_overwrite(exported, tmp_path, capsys):
    root, _ = exported
    out = tmp_path / "m.pt"
    out.with_suffix(".json").write_text("mine")
    assert main(["export", str(root / "run"), "--out", str(out)]) == 2
    assert capsys.readouterr().err == (f"error: {out.with_suffix('.json')} already exists: pass "
                                       f"--overwrite to replace, or choose another --out.\n")
    assert out.with_suffix(".json").read_text() == "mine" and not out.exists()
    assert main(["export", str(root / "run"), "--out", str(out), "--overwrite"]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["step"] == 2 and out.is_file()


@pytest.fixture
def served(exported, tmp_path, monkeypatch):
    """The exported file registered as 'tiny', served on 127.0.0.1, no checkout copy, empty cache."""
    root, record = exported
    handler = functools.partial(QuietHandler, directory=str(root / "files"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setitem(pretrained.REGISTRY, "tiny",
                        pretrained.Entry("tiny", "tiny.pt", record["sha256"], "test model"))
    monkeypatch.setattr(pretrained, "checkout_dir", lambda: tmp_path / "no-checkout")
    monkeypatch.setenv("MAE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MAE_CHECKPOINT_URL", f"http://127.0.0.1:{server.server_port}/")
    yield server, tmp_path / "cache"
    server.shutdown()
    server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; ``/short/<name>`` sends the first half of ``<name>`` under the whole
    file's Content-Length, then closes (a download cut off mid-way)."""

    def do_GET(self):
        if not self.path.startswith("/short/"):
            return super().do_GET()
        data = (Path(self.directory) / self.path[len("/short/"):]).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[:len(data) // 2])

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serving(folder):
    """``folder`` served on 127.0.0.1 for the block; yields its URL (ending in /)."""
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()


def test_download_checks_sha256_and_caches(served, monkeypatch):
    server, cache = served
    model, configs = pretrained.load("tiny")
    assert pretrained.info("tiny")["steps"] == 2
    assert (cache / "tiny.pt").is_file() and configs["model"]["encoder_dim"] == SMALL["encoder_dim"]
    server.shutdown()  # the cached file is used from now on; closed: refused at once, not a
    server.server_close()  # connection left waiting for the 60 s timeout
    assert pretrained.path("tiny") == cache / "tiny.pt"
    (cache / "tiny.pt").write_bytes(b"damaged")  # a damaged cache is dropped, then refetched
    with pytest.raises(CheckpointError, match="cannot download tiny"):
        pretrained.path("tiny")
    assert not (cache / "tiny.pt").exists()


def test_a_download_with_another_sha256_is_not_kept(served, monkeypatch):
    _, cache = served
    monkeypatch.setitem(pretrained.REGISTRY, "tiny",
                        pretrained.Entry("tiny", "tiny.pt", "0" * 64, "test model"))
    with pytest.raises(CheckpointError, match="not the registered"):
        pretrained.path("tiny")
    assert not list(cache.glob("*tiny*"))


def test_unknown_name_and_no_download(served):
    with pytest.raises(CheckpointError, match="no trained model is named 'tinny'"):
        pretrained.path("tinny")
    with pytest.raises(CheckpointError, match="allow the download"):
        pretrained.path("tiny", download=False)


@needs_cifar
def test_cli_checkpoint_takes_a_name(served, tmp_path, capsys):
    from mae.cli import main

    out = tmp_path / "rec.png"
    assert main(["visualize", "--checkpoint", "tiny", "--dataset", "cifar10", "--num", "2",
                 "--out", str(out)]) == 0
    assert out.is_file()
    scores = tmp_path / "knn.json"
    assert main(["knn", "--checkpoint", "tiny", "--dataset", "cifar10", "--train-subset", "300",
                 "--test-subset", "100", "--no-progress", "--out", str(scores)]) == 0
    assert json.loads(scores.read_text())["pretrain_steps"] == 2
    assert main(["export", "--list"]) == 0
    assert "tiny: test model (tiny.pt)" in capsys.readouterr().out
    assert main(["visualize", "--checkpoint", "tinny", "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_committed_checkpoints_match_the_registry():
    for name in pretrained.names():
        entry = pretrained.REGISTRY[name]
        file = pretrained.checkout_dir() / entry.file
        assert file.is_file(), f"{file} is registered but not committed"
        assert pretrained.sha256(file) == entry.sha256, name
        record = json.loads(file.with_suffix(".json").read_text())
        assert record["sha256"] == entry.sha256 and record["pretrain"]["provenance"]["git_dirty"] \
            is False
        model, configs = pretrained.load(name)
        assert configs["model"] == model.config.to_dict()


def test_every_registered_model_downloads_into_a_copy_of_the_package(tmp_path):
    """What a pip or Colab user gets: the package copied outside the checkout (so no
    checkpoints/ beside it), an empty cache, each registered file downloaded from a server (here
    127.0.0.1 serving the committed checkpoints/), its sha256 checked, then loaded."""
    import os
    import shutil
    import subprocess
    import sys

    site = tmp_path / "site"
    shutil.copytree(Path(pretrained.__file__).parent, site / "mae",
                    ignore=shutil.ignore_patterns("__pycache__"))
    code = ("import mae\n"
            "from mae import pretrained\n"
            "assert not pretrained.checkout_dir().exists(), pretrained.checkout_dir()\n"
            "for name in pretrained.names():\n"
            "    model, configs = pretrained.load(name)\n"
            "    assert configs['model'] == model.config.to_dict()\n"
            "    print(name, pretrained.path(name, download=False), mae.__file__)\n")
    with serving(pretrained.checkout_dir()) as url:
        env = {**os.environ, "PYTHONPATH": str(site), "MAE_CACHE": str(tmp_path / "cache"),
               "MAE_CHECKPOINT_URL": url}
        done = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, text=True,
                              capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines] == pretrained.names()
    for line in lines:
        name, file, module = line.split()
        assert file == str(tmp_path / "cache" / pretrained.REGISTRY[name].file)
        assert module.startswith(str(site))  # the copy, not the checkout's package
        assert pretrained.sha256(file) == pretrained.REGISTRY[name].sha256


def test_official_weights_from_a_url_load_into_the_same_model(tmp_path, monkeypatch):
    """The released-weights page's path: an official-format file (random weights, converted
    with mae.convert.to_official) served on 127.0.0.1, downloaded, cached and converted back."""
    from mae import MAE, MAEConfig
    from mae.convert import ConversionError, to_official

    torch.manual_seed(0)
    source = MAE(MAEConfig.preset("micro", norm_pix_loss=False))
    (tmp_path / "www").mkdir()
    torch.save({"model": to_official(source)}, tmp_path / "www" / "mae_visualize_micro.pth")
    (tmp_path / "www" / "broken.pth").write_bytes(b"PK\x03\x04 not really")
    monkeypatch.setenv("MAE_CACHE", str(tmp_path / "cache"))
    with serving(tmp_path / "www") as url:
        model = pretrained.load_official(url + "mae_visualize_micro.pth", "micro",
                                         norm_pix_loss=False)
        with pytest.raises(ConversionError, match="shape mismatch|missing"):
            pretrained.load_official(url + "mae_visualize_micro.pth", "micro", decoder_layers=4)
        with pytest.raises(CheckpointError, match="cannot be read as a torch checkpoint"):
            pretrained.load_official(url + "broken.pth", "micro")
        with pytest.raises(CheckpointError, match="cannot download the official checkpoint"):
            pretrained.load_official(url + "absent.pth", "micro")
    want = source.state_dict()
    assert all(torch.equal(model.state_dict()[k], want[k]) for k in want)
    cached = sorted(p.name for p in (tmp_path / "cache" / "official").iterdir())
    assert len(cached) == 1 and cached[0].endswith("-mae_visualize_micro.pth")  # broken: not kept
    assert not model.training


def official_file(folder, seed):
    """An official-format checkpoint of a micro MAE with random weights of ``seed``; returns
    the model it came from."""
    from mae import MAE, MAEConfig
    from mae.convert import to_official

    torch.manual_seed(seed)
    source = MAE(MAEConfig.preset("micro", norm_pix_loss=False))
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"model": to_official(source)}, folder / "checkpoint.pth")
    return source


def same_weights(a, b):
    return all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())


def test_official_downloads_are_cached_by_the_whole_url_and_only_when_whole(tmp_path,
                                                                            monkeypatch):
    a, b = official_file(tmp_path / "www" / "a", 0), official_file(tmp_path / "www" / "b", 1)
    cache = tmp_path / "cache" / "official"
    monkeypatch.setenv("MAE_CACHE", str(tmp_path / "cache"))
    with serving(tmp_path / "www") as url:
        load = functools.partial(pretrained.load_official, preset="micro", norm_pix_loss=False)
        assert same_weights(load(url + "a/checkpoint.pth"), a)
        assert same_weights(load(url + "b/checkpoint.pth"), b)  # the same name, another file
        load(url + "a/checkpoint.pth?v=2")
        assert len(list(cache.iterdir())) == 3  # the query is part of the key
        with pytest.raises(CheckpointError, match="names a folder, not a file"):
            load(url + "a/")
        with pytest.raises(CheckpointError, match=r"stopped after \d+ of \d+ bytes; it was not "
                                                  r"kept"):
            load(url + "short/b/checkpoint.pth")
    assert len(list(cache.iterdir())) == 3  # neither the listing nor the half file


def test_load_official_names_what_to_change_not_arguments_it_lacks(tmp_path):
    from mae.convert import ConversionError

    official_file(tmp_path, 0)
    state = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    encoder = {k: v for k, v in state["model"].items() if not k.startswith(("decoder", "mask"))}
    torch.save({"model": encoder}, tmp_path / "encoder.pth")
    with pytest.raises(ConversionError) as e:
        pretrained.load_official(str(tmp_path / "encoder.pth"), "micro", norm_pix_loss=False)
    assert "does not fit the model of preset 'micro'" in str(e.value) and "missing" in str(e.value)
    assert "format" not in str(e.value)  # load_official takes none


def test_load_messages_point_the_right_way(exported, tmp_path, monkeypatch):
    root, record = exported
    repo = tmp_path / "repo"
    (repo / "checkpoints").mkdir(parents=True)
    (repo / "checkpoints" / "tiny.pt").write_bytes((root / "files" / "tiny.pt").read_bytes())
    monkeypatch.setitem(pretrained.REGISTRY, "tiny",
                        pretrained.Entry("tiny", "tiny.pt", record["sha256"], "test model"))
    monkeypatch.setattr(pretrained, "checkout_dir", lambda: repo / "checkpoints")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(CheckpointError, match="CUDA is not available on this host; load it with "
                                              "map_location='cpu'") as e:
        pretrained.load("tiny", map_location="cuda")
    assert "corrupted" not in str(e.value) and "delete" not in str(e.value)
    for call in (pretrained.load, pretrained.resolve):
        with pytest.raises(CheckpointError, match="Did you mean 'tiny'?") as e:
            call("tinny")
        assert "pass the path" not in str(e.value)
    with pytest.raises(CheckpointError, match="load_pretrained"):
        pretrained.load("tinny")
    (repo / "checkpoints" / "tiny.pt").write_bytes(b"changed")
    with pytest.raises(CheckpointError, match=f"git -C {repo} checkout -- checkpoints/tiny.pt"):
        pretrained.load("tiny")


def test_export_records_the_data_relative_to_mae_data(tmp_path, monkeypatch):
    from mae.pretrained import without_paths

    data = tmp_path / "data"
    monkeypatch.setenv("MAE_DATA", str(data))
    record = {"source": f"{data}/cifar-10-batches-py", "n": 3,
              "command": [f"--out {tmp_path}/runs/r", f"{data}/x"]}
    local = {f"{tmp_path}/runs/": "", f"{data}/": "$MAE_DATA/"}
    assert without_paths(record, local) == {"source": "$MAE_DATA/cifar-10-batches-py", "n": 3,
                                            "command": ["--out r", "$MAE_DATA/x"]}


def test_load_official_with_the_cache_under_a_file_names_the_cache(tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("MAE_CACHE", str(tmp_path / "a-file" / "cache"))
    with pytest.raises(Exception, match=r"download cache folder \(\$MAE_CACHE\)") as e:
        pretrained.load_official("http://127.0.0.1:9/mae_pretrain_vit_base.pth", "micro")
    assert "network" not in str(e.value)
