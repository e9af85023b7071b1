"""Evaluating a pre-trained encoder (the paper's appendix A.2, A.3): frozen features with a linear
probe and kNN, and end-to-end fine-tuning. Every function returns a metrics dict."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import EvalConfig, MAEConfig
from .data import ImageDataset, augment, crop_boxes, resize_batch
from .encoder import Encoder
from .model import MAE
from .runtime import STREAM_FT, STREAM_PROBE, autocast, fused_adamw, generator, seed_for
from .train import init_model, lr_at


# ----- frozen features ------------------------------------------------------------------------
@torch.no_grad()
def extract_features(
    model: MAE, data: ImageDataset, pool: str = "cls", batch_size: int = 512,
    amp: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder features of every image, unmasked: (N, D) float32 and labels (N,).

    pool: ``cls`` (the CLS token, as the paper's linear probe) or ``mean`` (of the patch tokens).
    """
    if pool == "cls" and not model.config.cls_token:
        raise ValueError("pool='cls' needs a CLS token, but the model was built with "
                         "cls_token=False: use pool='mean' (features: mean).")
    T = model.config.num_prefix
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    feats = []
    for start in range(0, len(data), batch_size):
        images = data.images[start:start + batch_size].to(device)
        x = resize_batch(images, model.config.img_size, data.mean, data.std)
        with autocast(device, amp):
            latent = model.features(x)  # (B, T + L, D)
        feats.append((latent[:, 0] if pool == "cls" else latent[:, T:].mean(1)).float())
    model.train(was_training)
    return torch.cat(feats), data.labels.to(device)


def linear_probe(
    train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
    num_classes: int, config: EvalConfig | Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """BatchNorm (no affine) + linear head on cached features, SGD with momentum, warm-up + cosine.

    The paper uses LARS at batch 16384; at the small batches here SGD with momentum plays its role.
    """
    ec = EvalConfig.from_dict(config or {})
    x, y = train
    device = x.device
    g = torch.Generator(device="cpu").manual_seed(seed_for(ec.seed, 0, STREAM_PROBE))
    torch.manual_seed(seed_for(ec.seed, 1, STREAM_PROBE))
    head = nn.Sequential(nn.BatchNorm1d(x.shape[1], affine=False),
                         nn.Linear(x.shape[1], num_classes)).to(device)
    nn.init.trunc_normal_(head[1].weight, std=0.01)
    nn.init.zeros_(head[1].bias)
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
    class with weight exp(similarity / T) (Wu et al. 2018; as used for DINO)."""
    xt = F.normalize(train[0], dim=1)
    yt = train[1]
    correct = 0
    for start in range(0, len(test[0]), chunk):
        q = F.normalize(test[0][start:start + chunk], dim=1)
        sim, idx = (q @ xt.T).topk(min(k, len(xt)), dim=1)  # (b, k)
        votes = torch.zeros(len(q), num_classes, device=q.device)
        votes.scatter_add_(1, yt[idx], (sim / temperature).exp())
        correct += (votes.argmax(1) == test[1][start:start + chunk]).sum().item()
    return {"knn_top1": 100 * correct / len(test[0])}


def evaluate_frozen(
    model: MAE, train: ImageDataset, test: ImageDataset,
    config: EvalConfig | Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """Linear probe and kNN on the frozen encoder's features."""
    ec = EvalConfig.from_dict(config or {})
    t0 = time.perf_counter()
    tr = extract_features(model, train, ec.features, ec.batch_size)
    te = extract_features(model, test, ec.features, ec.batch_size)
    metrics = {"features_time_s": time.perf_counter() - t0}
    metrics.update(linear_probe(tr, te, train.num_classes, ec))
    metrics.update(knn_classify(tr, te, train.num_classes, ec.knn_k, ec.knn_temperature))
    return metrics


# ----- fine-tuning ----------------------------------------------------------------------------
class Classifier(nn.Module):
    """The MAE encoder on all patches, average-pooled, normalised, and a linear head (A.3)."""

    def __init__(self, config: MAEConfig, num_classes: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.encoder = Encoder(config, drop_path)
        self.fc_norm = nn.LayerNorm(config.encoder_dim, eps=config.layer_norm_eps)
        self.head = nn.Linear(config.encoder_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=2e-5)  # as the reference fine-tuning code
        nn.init.zeros_(self.head.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, classes) logits."""
        latent = self.encoder(images, 0.0).latent  # (B, T + L, D)
        return self.head(self.fc_norm(latent[:, self.encoder.config.num_prefix:].mean(1)))

    def layer_id(self, name: str) -> int:
        """0 for the embedding, i + 1 for block i, depth + 1 for the rest (for lr decay)."""
        if name.startswith(("encoder.patch_embed", "encoder.cls_token", "encoder.mask_token")):
            return 0
        if name.startswith("encoder.blocks."):
            return int(name.split(".")[2]) + 1
        return len(self.encoder.blocks) + 1


def layer_decay_groups(model: Classifier, weight_decay: float, decay: float) -> list[dict]:
    """Parameter groups with lr scale decay ** (depth + 1 - layer) and no weight decay on
    biases, norms and tokens."""
    depth = len(model.encoder.blocks) + 1
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        no_wd = p.ndim < 2 or name.endswith("token")
        layer = model.layer_id(name)
        group = groups.setdefault((layer, no_wd), {
            "params": [], "weight_decay": 0.0 if no_wd else weight_decay,
            "lr_scale": decay ** (depth - layer)})
        group["params"].append(p)
    return list(groups.values())


def mix_batch(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, ec: EvalConfig, g: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or cutmix (chosen half the time each when both are on) with label smoothing.
    Returns mixed images and soft targets (B, classes)."""
    smooth = ec.ft_label_smoothing
    target = F.one_hot(y, num_classes).float() * (1 - smooth) + smooth / num_classes
    use_cutmix = ec.ft_cutmix > 0 and (ec.ft_mixup == 0 or torch.rand(1, generator=g).item() < 0.5)
    alpha = ec.ft_cutmix if use_cutmix else ec.ft_mixup
    if alpha <= 0:
        return x, target
    lam = _beta(alpha, g)
    flipped = x.flip(0)
    if use_cutmix:
        H, W = x.shape[-2:]
        cut = math.sqrt(1 - lam)
        h, w = int(H * cut), int(W * cut)
        cy, cx = (torch.randint(0, n, (1,), generator=g).item() for n in (H, W))
        y0, y1 = max(cy - h // 2, 0), min(cy + h // 2, H)
        x0, x1 = max(cx - w // 2, 0), min(cx + w // 2, W)
        x = x.clone()
        x[:, :, y0:y1, x0:x1] = flipped[:, :, y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (H * W)
    else:
        x = lam * x + (1 - lam) * flipped
    return x, lam * target + (1 - lam) * target.flip(0)


def _beta(alpha: float, g: torch.Generator) -> float:
    """A Beta(alpha, alpha) draw, seeded from the torch generator."""
    seed = int(torch.randint(0, 2**62, (1,), generator=g))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def finetune(
    config: MAEConfig, train: ImageDataset, test: ImageDataset,
    encoder_state: Mapping[str, torch.Tensor] | None = None,
    eval_config: EvalConfig | Mapping[str, Any] | None = None,
    device: torch.device | str = "cpu", amp: torch.dtype | None = None, progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune the encoder end to end (from ``encoder_state``, or from random initialisation
    when None) and report test top-1. AdamW, layer-wise lr decay, drop path, label smoothing,
    mixup / cutmix, warm-up + cosine (appendix A.3; RandAugment is left out)."""
    ec = EvalConfig.from_dict(eval_config or {})
    device = torch.device(device)
    if encoder_state is None:  # the initialisation pre-training with the same seed starts from
        encoder_state = init_model(config, ec.seed).encoder.state_dict()
    torch.manual_seed(seed_for(ec.seed, 0, STREAM_FT))
    model = Classifier(config, train.num_classes, ec.ft_drop_path)
    model.encoder.load_state_dict(encoder_state)
    model.to(device).train()
    groups = layer_decay_groups(model, ec.ft_weight_decay, ec.ft_layer_decay)
    bs = ec.ft_batch_size
    steps_per_epoch = len(train) // bs
    total = max(1, round(ec.ft_epochs * steps_per_epoch))
    warmup = round(ec.ft_warmup_epochs * steps_per_epoch)
    peak = ec.ft_base_lr * bs / 256
    opt = torch.optim.AdamW(groups, lr=peak, betas=(0.9, 0.999), fused=fused_adamw(device))
    images_all = train.images.to(device)
    labels_all = train.labels.to(device)
    from tqdm import tqdm  # plain: tqdm.auto warns in notebooks without ipywidgets

    t0 = time.perf_counter()
    losses = []
    for step in tqdm(range(total), desc="finetune", unit="step", disable=not progress):
        epoch, within = divmod(step, steps_per_epoch)
        if within == 0:
            order = torch.randperm(len(train), generator=generator(ec.seed, epoch, STREAM_FT))
        g = generator(ec.seed, 1_000_000 + step, STREAM_FT)
        idx = order[within * bs:(within + 1) * bs].to(device)
        boxes = crop_boxes(bs, train.img_size, train.img_size, g)
        flips = torch.rand(bs, generator=g) < 0.5
        x = augment(images_all[idx], config.img_size, boxes, flips, train.mean, train.std)
        x, target = mix_batch(x, labels_all[idx], train.num_classes, ec, g)
        lr = lr_at(step, total, warmup, peak)
        for group in opt.param_groups:
            group["lr"] = lr * group["lr_scale"]
        with autocast(device, amp):
            logits = model(x)
        loss = torch.sum(-target * F.log_softmax(logits.float(), dim=1), dim=1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(test), 512):
            x = resize_batch(test.images[start:start + 512].to(device), config.img_size,
                             test.mean, test.std)
            with autocast(device, amp):
                pred = model(x).argmax(1)
            correct += (pred == test.labels[start:start + 512].to(device)).sum().item()
    return {"finetune_top1": 100 * correct / len(test), "finetune_steps": total,
            "finetune_final_loss": sum(losses[-50:]) / len(losses[-50:]),
            "finetune_time_s": time.perf_counter() - t0}
