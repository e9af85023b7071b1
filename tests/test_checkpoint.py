
import pytest
import torch

from mae.checkpoint import CheckpointError, check_config, load_checkpoint, save_checkpoint


def test_round_trip_with_weights_only(tmp_path):
    payload = {"model": {"w": torch.arange(6.0)}, "step": 3, "config": {"model": {"a": 1}},
               "history": [{"loss": 0.5}]}
    path = save_checkpoint(tmp_path / "ckpt.pt", payload)
    ckpt = load_checkpoint(path, expected={"model": {"a": 1}})
    assert torch.equal(ckpt["model"]["w"], torch.arange(6.0)) and ckpt["step"] == 3
    assert ckpt["format_version"] == 1
    assert not list(tmp_path.glob(".*tmp*"))  # no temp file left behind


def test_truncated_checkpoint(tmp_path):
    path = save_checkpoint(tmp_path / "ckpt.pt", {"model": {"w": torch.randn(1000)}})
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match=r"truncated or corrupted.*Restore it from a copy, or "
                                              r"delete it and train again \(pretrain --overwrite\)"):
        load_checkpoint(path)


def test_a_text_file_is_not_called_a_pickle(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("this is not a checkpoint\n")
    with pytest.raises(CheckpointError, match="is not a checkpoint: torch.save writes a zip"):
        load_checkpoint(path)


class Payload:  # a pickled object: weights_only must refuse it
    pass


def test_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "format_version": 1, "extra": Payload()}, path)
    with pytest.raises(CheckpointError, match="pickled Python objects that weights_only"):
        load_checkpoint(path)


def test_other_config_is_refused_with_keys_named(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", {"config": {"model": {"mask_ratio": 0.75, "patch_size": 4}}})
    with pytest.raises(CheckpointError, match=r"mask_ratio: checkpoint 0.75 vs requested 0.5"):
        load_checkpoint(path, expected={"model": {"mask_ratio": 0.5, "patch_size": 4}})


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist: check the path") as error:
        load_checkpoint(tmp_path / "nope.pt")
    assert "--resume" not in str(error.value)
    torch.save({"w": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not an mae checkpoint.*load_weights"):
        load_checkpoint(tmp_path / "plain.pt")


def test_check_config_absent_keys():
    with pytest.raises(CheckpointError, match="x: checkpoint '<absent>' vs requested 1"):
        check_config({}, {"x": 1}, "here")


def test_loaded_models_are_in_eval_mode(tmp_path):
    """What load_pretrained and mae.pretrained.load give is ready to use: in eval mode, as
    load_official's, whatever mode the model was saved in."""
    from conftest import SMALL
    from mae import MAE, pretrained
    from mae.checkpoint import load_pretrained

    model = MAE(SMALL).train()
    save_checkpoint(tmp_path / "checkpoint.pt", {"model": model.state_dict(),
                                                 "config": {"model": model.config.to_dict()}})
    loaded, _ = load_pretrained(tmp_path)
    assert not loaded.training and not any(m.training for m in loaded.modules())
    if (pretrained.checkout_dir() / pretrained.REGISTRY["micro-cifar10"].file).is_file():
        assert not pretrained.load("micro-cifar10", download=False)[0].training
