"""Trained models by name: export, the committed files, the download path (a local HTTP server)."""

import functools
import http.server
import json
import threading

import pytest
import torch

from conftest import SMALL, needs_cifar
from mae import pretrained
from mae.checkpoint import CheckpointError, load_checkpoint
from mae.data import ImageDataset
from mae.train import pretrain

TRAIN = dict(dataset="synthetic", epochs=1.0, batch_size=32, warmup_epochs=0.0,
             checkpoint_every=0, num_threads=1)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A 2-step run on random images, exported; returns (folder, record)."""
    root = tmp_path_factory.mktemp("exported")
    g = torch.Generator().manual_seed(0)
    data = ImageDataset("synthetic", "train", torch.randint(0, 256, (64, 3, 32, 32), generator=g,
                                                            dtype=torch.uint8),
                        torch.arange(64) % 2, ["a", "b"], (0.5,) * 3, (0.25,) * 3)
    pretrain(SMALL, TRAIN, root / "run", dataset=data, progress=False)
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
    with pytest.raises(CheckpointError, match="exists"):
        pretrained.export(root / "run", root / "files" / "tiny.pt")
    with pytest.raises(CheckpointError, match="not a pre-training checkpoint"):
        pretrained.export(root / "files" / "tiny.pt", root / "files" / "again.pt")


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
    def log_message(self, *args):
        pass


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
    handler = functools.partial(QuietHandler, directory=str(tmp_path / "www"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("MAE_CACHE", str(tmp_path / "cache"))
    url = f"http://127.0.0.1:{server.server_port}/"
    try:
        model = pretrained.load_official(url + "mae_visualize_micro.pth", "micro",
                                         norm_pix_loss=False)
        with pytest.raises(ConversionError, match="shape mismatch|missing"):
            pretrained.load_official(url + "mae_visualize_micro.pth", "micro", decoder_layers=4)
        with pytest.raises(CheckpointError, match="cannot be read as a torch checkpoint"):
            pretrained.load_official(url + "broken.pth", "micro")
        with pytest.raises(CheckpointError, match="cannot download the official checkpoint"):
            pretrained.load_official(url + "absent.pth", "micro")
    finally:
        server.shutdown()
        server.server_close()
    want = source.state_dict()
    assert all(torch.equal(model.state_dict()[k], want[k]) for k in want)
    assert (tmp_path / "cache" / "official" / "mae_visualize_micro.pth").is_file()
    assert not model.training
