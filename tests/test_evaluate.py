import pytest
import torch

from conftest import SMALL, needs_cifar
from mae import MAE, MAEConfig, sincos_2d
from mae.config import ConfigError
from mae.recipe import EvalConfig
from mae.data import ImageDataset
from mae.evaluate import (
    Classifier, extract_features, finetune, knn_classify, linear_probe, mix_batch, probe_head,
    random_erase,
)
from mae.layers import DropPath
from mae.optim import layer_decay_groups

TINY = {"img_size": 16, "patch_size": 4, "encoder_dim": 32, "encoder_layers": 2,
        "encoder_heads": 2, "decoder_dim": 16, "decoder_layers": 1, "decoder_heads": 2}


def clusters(n_per_class=100, classes=4, dim=16, spread=0.3, seed=0):
    """Gaussian clusters around fixed centres; ``seed`` draws the points."""
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(123)) * 3
    y = torch.arange(classes).repeat_interleave(n_per_class)
    g = torch.Generator().manual_seed(seed)
    return centres[y] + spread * torch.randn(len(y), dim, generator=g), y


def test_knn_votes_do_not_overflow_at_a_small_temperature():
    """exp(sim / T) is inf in float32 for sim / T > 88: at T = 0.005 every vote was an inf tie.
    Subtracting each row's highest similarity first gives the same votes, finite. As T -> 0 the
    weighted vote becomes the nearest neighbour's label."""
    train, test = clusters(seed=0, spread=6.0), clusters(seed=1, n_per_class=50, spread=6.0)
    xt = torch.nn.functional.normalize(train[0], dim=1)
    nearest = (torch.nn.functional.normalize(test[0], dim=1) @ xt.T).argmax(1)
    one_nn = 100 * (train[1][nearest] == test[1]).float().mean().item()
    assert one_nn < 90  # the neighbourhoods mix classes: a tie-break would show
    for t in (0.005, 0.001):
        assert knn_classify(train, test, 4, k=20, temperature=t)["knn_top1"] == \
            pytest.approx(one_nn)


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
    with pytest.raises(ConfigError, match=r"cls_token=False: pool the patch tokens instead "
                                          r"\(pool='mean'"):
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


@pytest.mark.slow
@needs_cifar
def test_finetune_runs_on_cifar_and_repeats(cifar_train, cifar_test):
    config = MAEConfig.from_dict(SMALL)
    ec = {"ft_epochs": 1.0, "ft_batch_size": 32, "ft_drop_path": 0.1}
    a = finetune(config, cifar_train.subset(128), cifar_test.subset(64), None, ec, progress=False)
    b = finetune(config, cifar_train.subset(128), cifar_test.subset(64), None, ec, progress=False)
    assert a["finetune_steps"] == 4 and a == {**b, "finetune_time_s": a["finetune_time_s"]}
    assert a["finetune_final_loss"] > 0 and a["finetune_top1"] * 64 / 100 == \
        round(a["finetune_top1"] * 64 / 100)  # a count of the 64 test images


def test_finetune_starts_from_the_given_encoder(monkeypatch):
    """The classifier's encoder at its first step holds the given encoder's weights (without
    one, those of the random initialisation pre-training with the eval seed starts from)."""
    import mae.finetune
    from mae.train import init_model

    first = []

    class Spy(Classifier):
        def forward(self, images):
            if not first:
                first.append({k: v.clone() for k, v in self.encoder.state_dict().items()})
            return super().forward(images)

    monkeypatch.setattr(mae.finetune, "Classifier", Spy)
    config = MAEConfig.from_dict(TINY)
    data = images_dataset(16)
    ec = {"ft_epochs": 1.0, "ft_batch_size": 8, "seed": 1}
    for seed, given in ((5, True), (1, False)):
        state = init_model(config, seed).encoder.state_dict()
        first.clear()
        finetune(config, data, data, state if given else None, ec, progress=False)
        assert first[0].keys() == state.keys()
        assert all(torch.equal(first[0][k], state[k]) for k in state), (seed, given)
    other = init_model(config, 6).encoder.state_dict()
    assert not all(torch.equal(first[0][k], other[k]) for k in other)  # the check can fail



@needs_cifar
def test_finetune_curve_measures_without_changing_the_run(cifar_train, cifar_test):
    """curve_every adds evaluations that draw nothing random: the run and its result are the
    same, the last point is the end of the run, and its training top-1 is on clean images."""
    config = MAEConfig.from_dict(SMALL)
    ec = {"ft_epochs": 1.0, "ft_batch_size": 32, "ft_drop_path": 0.1}
    train, test = cifar_train.subset(128), cifar_test.subset(64)
    a = finetune(config, train, test, None, ec, progress=False)
    b = finetune(config, train, test, None, ec, progress=False, curve_every=3)
    curve = b.pop("finetune_curve")
    assert a == {**b, "finetune_time_s": a["finetune_time_s"]}
    assert [p["step"] for p in curve] == [3, 4] and curve[-1]["epoch"] == 1.0
    assert curve[-1]["test_top1"] == a["finetune_top1"]
    assert all(0 <= p["train_top1"] <= 100 and p["train_loss"] > 0 for p in curve)
    with pytest.raises(ConfigError, match="curve_every"):
        finetune(config, train, test, None, ec, progress=False, curve_every=-1)

def by_hand(clf, images, cls_token=True):
    """The classifier's forward written out: embed + positions, CLS first, blocks, mean of the
    patch tokens, fc_norm, head; no encoder norm."""
    enc, pos = clf.encoder, clf.pos_embed
    T = int(cls_token)
    x = enc.patch_embed(images) + pos[:, T:]
    if cls_token:
        x = torch.cat([(enc.cls_token + pos[:, :1]).expand(len(x), -1, -1), x], dim=1)
    for block in enc.blocks:
        x = block(x)
    return clf.head(clf.fc_norm(x[:, T:].mean(1)))


@pytest.mark.parametrize("cls_token", [True, False])
def test_classifier_pools_the_blocks_output_without_the_encoder_norm(cls_token):
    config = MAEConfig.from_dict({**TINY, "cls_token": cls_token})
    clf = Classifier(config, 5).eval()
    torch.nn.init.normal_(clf.head.weight)  # logits large enough to compare
    images = torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(clf(images), by_hand(clf, images, cls_token))
    # Not the encoder's normalised output pooled and normalised again (the old recipe).
    latent = clf.encoder(images, 0.0).latent
    twice = clf.head(clf.fc_norm(latent[:, int(cls_token):].mean(1)))
    assert (clf(images) - twice).abs().max() > 1e-3
    with torch.no_grad():  # the loaded norm weights do not matter
        clf.encoder.norm.weight.mul_(3.0)
        clf.encoder.norm.bias.add_(1.0)
    torch.testing.assert_close(clf(images), by_hand(clf, images, cls_token))


def test_classifier_learns_positions_started_from_the_sincos_table():
    config = MAEConfig.from_dict(TINY)
    clf = Classifier(config, 5)
    # The pre-training encoder's state dict, norm included, loads as it is.
    clf.encoder.load_state_dict(MAE(config).encoder.state_dict())
    assert isinstance(clf.pos_embed, torch.nn.Parameter) and clf.pos_embed.requires_grad
    assert torch.equal(clf.pos_embed.detach(), sincos_2d(32, 4, cls_token=True)[None])
    loss = torch.nn.functional.cross_entropy(clf(torch.randn(4, 3, 16, 16)), torch.arange(4))
    loss.backward()
    assert clf.pos_embed.grad is not None and clf.pos_embed.grad.abs().max() > 0
    assert clf.encoder.cls_token.grad.abs().max() > 0
    assert not clf.encoder.norm.weight.requires_grad and clf.encoder.norm.weight.grad is None


def test_random_erasing_draws_one_noise_box_per_chosen_image():
    x = torch.full((500, 3, 64, 64), 5.0)
    g = torch.Generator().manual_seed(0)
    assert random_erase(x, 0.0, g) is x  # off: the batch itself, nothing drawn
    assert torch.equal(g.get_state(), torch.Generator().manual_seed(0).get_state())
    out = random_erase(x, 1.0, torch.Generator().manual_seed(1))
    changed = out != x  # (B, C, H, W); noise equals 5.0 with probability 0
    assert torch.equal(changed, changed[:, :1].expand_as(changed))  # every channel alike
    box = changed[:, 0]  # (B, H, W)
    area = box.sum((1, 2))
    assert (area > 0).all()  # p = 1: every image is erased
    # One rectangle: its bounding box is all erased.
    rows, cols = box.any(2).sum(1), box.any(1).sum(1)
    assert torch.equal(rows * cols, area)
    # Area fraction in [0.02, 1/3], up to the rounding of the sides to whole pixels.
    frac = area / 64**2
    assert frac.min() >= 0.018 and frac.max() <= 0.343
    ratio = rows / cols  # log-uniform in [0.3, 1/0.3], up to rounding
    assert ratio.min() >= 0.25 and ratio.max() <= 4.0
    noise = out[changed]
    assert abs(noise.mean()) < 0.02 and abs(noise.std() - 1) < 0.02  # N(0, 1) per pixel
    half = random_erase(x, 0.5, torch.Generator().manual_seed(1))
    assert 200 < (half != x).flatten(1).any(1).sum() < 300
    again = random_erase(x, 1.0, torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
    assert not torch.equal(out, random_erase(x, 1.0, torch.Generator().manual_seed(2)))


def test_evaluate_frozen_refuses_what_cannot_run_before_extracting_features(monkeypatch):
    import mae.evaluate

    def never(*args, **kwargs):
        raise AssertionError("features were extracted")

    monkeypatch.setattr(mae.evaluate, "extract_features", never)
    model, data = MAE(MAEConfig.from_dict(TINY)), images_dataset(10)
    with pytest.raises(ConfigError, match="knn_k 20 needs at least 20 training features, got 10"):
        mae.evaluate.evaluate_frozen(model, data, data)
    with pytest.raises(ConfigError, match="got probe_batch_size 1 with 10 training"):
        mae.evaluate.evaluate_frozen(model, data, data, {"probe_batch_size": 1, "knn_k": 5})
    no_cls = MAE(MAEConfig.from_dict({**TINY, "cls_token": False}))
    with pytest.raises(ConfigError, match="pool='mean'"):
        mae.evaluate.evaluate_frozen(no_cls, data, data, {"knn_k": 5})


def test_probe_batchnorm_has_no_affine_and_eps_1e_6():
    head = probe_head(16, 4, seed=0)
    assert head[0].eps == 1e-6 and not head[0].affine
    assert torch.equal(head[1].weight, probe_head(16, 4, seed=0)[1].weight)


def images_dataset(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ImageDataset("synthetic", "train", torch.randint(0, 256, (n, 3, 16, 16), generator=g,
                                                            dtype=torch.uint8),
                        torch.arange(n) % 3, ["a", "b", "c"], (0.5,) * 3, (0.25,) * 3)


def without_time(metrics):
    return {k: v for k, v in metrics.items() if not k.endswith("_time_s")}


def test_probe_and_finetune_leave_the_global_rng_alone_and_repeat():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    train, test = clusters(seed=0), clusters(seed=1)
    a = linear_probe(train, test, 4, {"probe_epochs": 2, "seed": 3})
    assert torch.equal(torch.get_rng_state(), before)
    torch.rand(5)  # a different global state: the same result
    assert without_time(linear_probe(train, test, 4, {"probe_epochs": 2, "seed": 3})) == \
        without_time(a)
    config = MAEConfig.from_dict(TINY)
    data, held_out = images_dataset(32), images_dataset(16, seed=1)
    ec = {"ft_epochs": 1.0, "ft_batch_size": 8, "ft_reprob": 0.5, "seed": 1}
    before = torch.get_rng_state()
    b = finetune(config, data, held_out, None, ec, progress=False)  # init_model reseeds inside
    assert torch.equal(torch.get_rng_state(), before)
    torch.rand(5)
    assert without_time(finetune(config, data, held_out, None, ec, progress=False)) == \
        without_time(b)
    state = MAE(config).encoder.state_dict()
    before = torch.get_rng_state()
    finetune(config, data, held_out, state, ec, progress=False)
    assert torch.equal(torch.get_rng_state(), before)


def test_probe_and_finetune_reject_what_cannot_train():
    train, test = clusters(), clusters(seed=1)
    with pytest.raises(ConfigError, match=r"probe_epochs must be a finite number in \[1, inf\), "
                                          r"got 0 \(linear probe epochs"):
        linear_probe(train, test, 4, {"probe_epochs": 0})
    empty = (train[0][:0], train[1][:0])
    with pytest.raises(ConfigError, match="linear_probe got no training features"):
        linear_probe(empty, test, 4)
    for features, batch in (((train[0][:1], train[1][:1]), 1024), (train, 1)):
        with pytest.raises(ConfigError, match=r"batches of at least 2 images \(its BatchNorm"):
            linear_probe(features, test, 4, {"probe_batch_size": batch})
    config = MAEConfig.from_dict(TINY)
    data = images_dataset(10)
    with pytest.raises(ConfigError, match=r"needs at least ft_batch_size = 16 training images "
                                          r"for one step, got 10: lower ft_batch_size"):
        finetune(config, data, data, None, {"ft_batch_size": 16}, progress=False)
    for epochs in (0, -1.0):
        with pytest.raises(ConfigError, match=r"ft_epochs must be a finite number in \(0, inf\), "
                                              r"got -?[01]"):
            finetune(config, data, data, None, {"ft_epochs": epochs, "ft_batch_size": 4},
                     progress=False)
    with pytest.raises(ConfigError, match=r"ft_reprob must be a finite number in \[0, 1\], got 1.5"):
        EvalConfig(ft_reprob=1.5)


@pytest.mark.parametrize("cls, field, value, span", [
    ("TrainConfig", "base_lr", float("nan"), r"\[0, inf\)"),
    ("TrainConfig", "beta1", 2.0, r"\[0, 0.9999\]"),
    ("TrainConfig", "epochs", float("inf"), r"\(0, inf\)"),
    ("TrainConfig", "batch_size", 0, r"\[1, inf\)"),
    ("EvalConfig", "probe_lr", float("nan"), r"\(0, inf\)"),
    ("EvalConfig", "knn_temperature", 0.0, r"\(0, inf\)"),
    ("EvalConfig", "batch_size", 0, r"\[1, inf\)"),
    ("EvalConfig", "ft_drop_path", 1.0, r"\[0, 0.99\]"),
])
def test_every_numeric_recipe_field_is_finite_and_in_range(cls, field, value, span):
    """Each bad number is refused by name, with its range and what the field is for."""
    import mae.recipe

    with pytest.raises(ConfigError, match=rf"^{field} must be a finite number in {span}, got "):
        getattr(mae.recipe, cls).from_dict({field: value})
