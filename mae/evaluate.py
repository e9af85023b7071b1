"""Evaluating a pre-trained encoder (the paper's appendix A.2, A.3): frozen features with a linear
probe and kNN here, end-to-end fine-tuning in `mae.finetune` (importable from here too). Every
function returns a metrics dict."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import ConfigError, MAEConfig
from .recipe import EvalConfig
from .augment import resize_batch
from .data import ImageDataset
from .finetune import Classifier, finetune, mix_batch, random_erase
from .model import MAE
from .optim import lr_at
from .runtime import STREAM_PROBE, autocast, autocast_dtype, precision_name, seed_for

__all__ = ["extract_features", "probe_head", "linear_probe", "knn_classify", "evaluate_frozen",
           "check_pool", "check_train_size",
           # fine-tuning, from mae.finetune
           "Classifier", "finetune", "mix_batch", "random_erase"]


# ----- frozen features ------------------------------------------------------------------------
def check_pool(config: MAEConfig, pool: str) -> None:
    """Raise ConfigError unless the model has the features ``pool`` takes."""
    if pool == "cls" and not config.cls_token:
        raise ConfigError("features 'cls' need a CLS token, but the model was built with "
                          "cls_token=False: pool the patch tokens instead (pool='mean'; "
                          "--features mean on the command line).")


def check_train_size(num_train: int, probe_batch_size: int | None = None,
                     knn_k: int | None = None) -> None:
    """Raise ConfigError, before any feature is extracted, when the linear probe (with
    ``probe_batch_size``) or the kNN (with ``knn_k``) cannot run on ``num_train`` images."""
    if probe_batch_size is not None and min(probe_batch_size, num_train) < 2:
        raise ConfigError(f"the linear probe needs batches of at least 2 images (its BatchNorm "
                          f"normalises over the batch), got probe_batch_size {probe_batch_size} "
                          f"with {num_train} training image(s): use at least 2 of each.")
    if knn_k is not None and not 1 <= knn_k <= num_train:
        raise ConfigError(f"knn_k {knn_k} needs at least {knn_k} training features, got "
                          f"{num_train}: lower knn_k or use more training images.")


@torch.no_grad()
def extract_features(
    model: MAE, data: ImageDataset, pool: str = "cls", batch_size: int = 512,
    amp: torch.dtype | None = None, progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder features of every image, unmasked: (N, D) float32 and labels (N,).

    pool: ``cls`` (the CLS token, as the paper's linear probe) or ``mean`` (of the patch tokens).
    progress: a progress bar (minutes for a large set on a CPU).
    """
    from tqdm import tqdm  # plain: tqdm.auto warns in notebooks without ipywidgets

    check_pool(model.config, pool)
    data.check_size(model.config.img_size, "feature extraction")
    T = model.config.num_prefix
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    feats = []
    for start in tqdm(range(0, len(data), batch_size), desc=f"features of {data.split}",
                      unit="batch", disable=not progress, leave=False):
        images = data.images[start:start + batch_size].to(device)
        x = resize_batch(images, model.config.img_size, data.mean, data.std)
        with autocast(device, amp):
            latent = model.features(x)  # (B, T + L, D)
        feats.append((latent[:, 0] if pool == "cls" else latent[:, T:].mean(1)).float())
    model.train(was_training)
    return torch.cat(feats), data.labels.to(device)


def probe_head(dim: int, num_classes: int, seed: int) -> nn.Sequential:
    """The linear probe: BatchNorm without affine parameters (eps 1e-6, as the reference), then a
    linear layer (weights N(0, 0.01) truncated, biases 0); (N, dim) -> (N, classes).

    Initialised on the CPU from ``seed`` alone; torch's global random state is the caller's again
    afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        head = nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6),
                             nn.Linear(dim, num_classes))
        nn.init.trunc_normal_(head[1].weight, std=0.01)
        nn.init.zeros_(head[1].bias)
    return head


def linear_probe(
    train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
    num_classes: int, config: EvalConfig | Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """BatchNorm (no affine, eps 1e-6) + linear head on cached features (N, D), SGD with
    momentum, warm-up + cosine.

    The paper uses LARS at batch 16384; at the small batches here SGD with momentum plays its role.
    """
    ec = EvalConfig.from_dict(config or {})
    x, y = train
    if len(x) == 0:
        raise ConfigError("linear_probe got no training features: extract them from a non-empty "
                          "training set (check train_subset / eval_train_subset).")
    check_train_size(len(x), probe_batch_size=ec.probe_batch_size)
    device = x.device
    g = torch.Generator(device="cpu").manual_seed(seed_for(ec.seed, 0, STREAM_PROBE))
    head = probe_head(x.shape[1], num_classes, seed_for(ec.seed, 1, STREAM_PROBE)).to(device)
    bs = min(ec.probe_batch_size, len(x))
    steps_per_epoch = len(x) // bs
    total = ec.probe_epochs * steps_per_epoch
    peak = ec.probe_lr * bs / 256
    opt = torch.optim.SGD(head.parameters(), lr=peak, momentum=0.9,
                          weight_decay=ec.probe_weight_decay)
    t0 = time.perf_counter()
    step = 0
    for _ in range(ec.probe_epochs):
        order = torch.randperm(len(x), generator=g).to(device)
        for i in range(steps_per_epoch):
            idx = order[i * bs:(i + 1) * bs]
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, total // 9, peak)  # 10 of 90 epochs warm up
            loss = F.cross_entropy(head(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    head.eval()
    with torch.no_grad():
        train_acc = (head(x).argmax(1) == y).float().mean().item()
        test_acc = (head(test[0]).argmax(1) == test[1]).float().mean().item()
    return {"probe_top1": 100 * test_acc, "probe_train_top1": 100 * train_acc,
            "probe_time_s": time.perf_counter() - t0}


@torch.no_grad()
def knn_classify(
    train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
    num_classes: int, k: int = 20, temperature: float = 0.07, chunk: int = 1024,
) -> dict[str, float]:
    """Weighted kNN on cosine similarity: each of the k nearest training features votes for its
    class with weight exp(similarity / T) (Wu et al. 2018; as used for DINO). The weights are
    computed as exp((similarity - the row's highest) / T), the same votes up to a factor per test
    image, so that no temperature overflows float32."""
    check_train_size(len(train[0]), knn_k=k)
    xt = F.normalize(train[0], dim=1)
    yt = train[1]
    correct = 0
    for start in range(0, len(test[0]), chunk):
        q = F.normalize(test[0][start:start + chunk], dim=1)
        sim, idx = (q @ xt.T).topk(k, dim=1)  # (b, k)
        votes = torch.zeros(len(q), num_classes, device=q.device)
        votes.scatter_add_(1, yt[idx], ((sim - sim[:, :1]) / temperature).exp())
        correct += (votes.argmax(1) == test[1][start:start + chunk]).sum().item()
    return {"knn_top1": 100 * correct / len(test[0])}


def evaluate_frozen(
    model: MAE, train: ImageDataset, test: ImageDataset,
    config: EvalConfig | Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """Linear probe and kNN on the frozen encoder's features, extracted on the model's device
    with the autocast of the eval config's ``precision`` (`mae.runtime.autocast_dtype`)."""
    ec = EvalConfig.from_dict(config or {})
    device = next(model.parameters()).device
    amp = autocast_dtype(ec.precision, device, model.config.encoder_dim)
    check_pool(model.config, ec.features)
    check_train_size(len(train), ec.probe_batch_size, ec.knn_k)
    t0 = time.perf_counter()
    tr = extract_features(model, train, ec.features, ec.batch_size, amp)
    te = extract_features(model, test, ec.features, ec.batch_size, amp)
    metrics = {"features_time_s": time.perf_counter() - t0}
    if amp is not None:  # float32 runs record nothing here, as before the policy
        metrics["features_precision"] = precision_name(amp)
    metrics.update(linear_probe(tr, te, train.num_classes, ec))
    metrics.update(knn_classify(tr, te, train.num_classes, ec.knn_k, ec.knn_temperature))
    return metrics
