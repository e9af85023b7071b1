import pytest
import torch

from conftest import SMALL, needs_cifar
from mae import MAE, MAEConfig
from mae.config import EvalConfig
from mae.evaluate import (
    Classifier, extract_features, finetune, knn_classify, layer_decay_groups, linear_probe,
    mix_batch,
)
from mae.layers import DropPath


def clusters(n_per_class=100, classes=4, dim=16, spread=0.3, seed=0):
    """Gaussian clusters around fixed centres; ``seed`` draws the points."""
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(123)) * 3
    y = torch.arange(classes).repeat_interleave(n_per_class)
    g = torch.Generator().manual_seed(seed)
    return centres[y] + spread * torch.randn(len(y), dim, generator=g), y


def test_knn_matches_a_brute_force_vote():
    train, test = clusters(seed=0, spread=2.0), clusters(seed=1, n_per_class=20, spread=2.0)
    got = knn_classify(train, test, 4, k=5, temperature=0.1)["knn_top1"]
    xt = torch.nn.functional.normalize(train[0], dim=1)
    correct = 0
    for q, label in zip(torch.nn.functional.normalize(test[0], dim=1), test[1]):
        sims = xt @ q
        top = sims.argsort(descending=True)[:5]
        votes = torch.zeros(4)
        for i in top:
            votes[train[1][i]] += torch.exp(sims[i] / 0.1)
        correct += int(votes.argmax() == label)
    assert got == pytest.approx(100 * correct / len(test[1]))


def test_probe_and_knn_separate_clear_clusters():
    train, test = clusters(seed=0), clusters(seed=1)
    assert linear_probe(train, test, 4, {"probe_epochs": 20})["probe_top1"] > 95
    assert knn_classify(train, test, 4)["knn_top1"] == 100


@needs_cifar
def test_features_cls_and_mean(cifar_test):
    model = MAE(MAEConfig.from_dict(SMALL))
    data = cifar_test.subset(10)
    cls, labels = extract_features(model, data, "cls", batch_size=4)
    mean, _ = extract_features(model, data, "mean")
    assert cls.shape == mean.shape == (10, 64) and torch.equal(labels, data.labels)
    assert not torch.allclose(cls, mean)
    assert model.training  # the caller's mode is restored
    no_cls = MAE(MAEConfig.from_dict({**SMALL, "cls_token": False}))
    assert extract_features(no_cls, data, "mean")[0].shape == (10, 64)
    with pytest.raises(ValueError, match="cls_token=False: use pool='mean'"):
        extract_features(no_cls, data, "cls")


def test_layer_decay_scales():
    model = Classifier(MAEConfig.from_dict(SMALL), 10)
    groups = layer_decay_groups(model, 0.05, 0.5)
    scale = {}
    names = {id(p): n for n, p in model.named_parameters()}
    for g in groups:
        for p in g["params"]:
            scale[names[id(p)]] = (g["lr_scale"], g["weight_decay"])
    assert scale["head.weight"] == (1.0, 0.05) and scale["head.bias"] == (1.0, 0.0)
    assert scale["encoder.blocks.1.attn.qkv.weight"] == (0.5, 0.05)
    assert scale["encoder.blocks.0.mlp.fc1.weight"] == (0.25, 0.05)
    assert scale["encoder.patch_embed.proj.weight"] == (0.125, 0.05)
    assert scale["encoder.cls_token"] == (0.125, 0.0)


def test_mixup_cutmix_targets():
    x = torch.randn(8, 3, 16, 16)
    y = torch.arange(8) % 4
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        mixed, target = mix_batch(x, y, 4, EvalConfig(), g)
        assert mixed.shape == x.shape
        torch.testing.assert_close(target.sum(1), torch.ones(8))
        assert target.min() >= 0.1 / 4 - 1e-6  # label smoothing floor
    plain, target = mix_batch(x, y, 4, EvalConfig(ft_mixup=0, ft_cutmix=0, ft_label_smoothing=0), g)
    assert torch.equal(plain, x) and torch.equal(target.argmax(1), y)


def test_drop_path_drops_whole_samples():
    dp = DropPath(0.5).train()
    out = dp(torch.ones(1000, 4, 3))
    kept = out[:, 0, 0] > 0
    assert 400 < kept.sum() < 600
    assert torch.equal(out[kept], torch.full_like(out[kept], 2.0))
    assert torch.equal(dp.eval()(torch.ones(3, 2)), torch.ones(3, 2))


@needs_cifar
def test_finetune_runs_and_starts_from_the_given_encoder(cifar_train, cifar_test):
    config = MAEConfig.from_dict(SMALL)
    ec = {"ft_epochs": 1.0, "ft_batch_size": 32, "ft_drop_path": 0.1}
    a = finetune(config, cifar_train.subset(128), cifar_test.subset(64), None, ec, progress=False)
    b = finetune(config, cifar_train.subset(128), cifar_test.subset(64), None, ec, progress=False)
    assert a["finetune_steps"] == 4 and a == {**b, "finetune_time_s": a["finetune_time_s"]}
    assert 0 <= a["finetune_top1"] <= 100


def test_classifier_without_cls_token_pools_the_patch_tokens():
    config = MAEConfig.from_dict({**SMALL, "cls_token": False})
    clf = Classifier(config, 10).eval()
    images = torch.randn(2, 3, 32, 32)
    latent = clf.encoder(images, 0.0).latent  # (B, L, D)
    assert latent.shape == (2, 64, 64)
    torch.testing.assert_close(clf(images), clf.head(clf.fc_norm(latent.mean(1))))
