"""MAE pre-training (the paper's appendix A.1): AdamW, warm-up + cosine, exact resume, DDP.

Every random draw of a step (which images, their crops and flips, their masks) is a function of
(seed, step) alone, drawn for the whole global batch and then sliced per rank. So a run resumed
from a checkpoint continues bit for bit, and two ranks with half the batch each see exactly what
one process with the whole batch sees.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .checkpoint import CHECKPOINT, refuse_existing_run, save_checkpoint, write_history
from .config import ConfigError, MAEConfig, MAEError, check_hides_a_patch
from .recipe import TrainConfig
from .resume import resumable_checkpoint
from .augment import augment, crop_boxes, normalize, resize_batch
from .data import ImageDataset, load_dataset
from .streaming import FolderFiles, loader_of, stream_batches
from .hidden import HiddenPatchLoss
from .masking import sample_noise
from .model import MAE
from .board import tensorboard_writer
from .optim import lr_at, param_groups
from .files import (
    check_writable, holding_folder_lock, remove_stale_temporaries, write_json_atomic,
)
from .provenance import CpuClock, provenance
from .runtime import (
    STREAM_AUG, STREAM_INIT, STREAM_ORDER, Dist, all_mean, autocast, autocast_dtype,
    fused_adamw, generator, init_distributed, precision_name, rng_state, seed_for, set_rng_state,
)


class NonFiniteLossError(MAEError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def init_model(config: MAEConfig | Mapping[str, Any], seed: int) -> MAE:
    """The model a run with this seed starts from (also the random-init baseline). The caller's
    global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_for(seed, 0, STREAM_INIT))
        return MAE(config)


# ----- batches --------------------------------------------------------------------------------
def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=generator(seed, epoch, STREAM_ORDER))


def draw_batch(
    data: ImageDataset, order: torch.Tensor, start: int, size: int, out_size: int,
    config: MAEConfig, tc: TrainConfig, step: int, info: Dist, part: int = 0,
    streamed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and masking noise of optimizer step ``step``: the global batch [start, start + size)
    of the epoch's order, its crops, flips and masks all drawn whole from (seed, step); returned
    is this process's share of accumulation micro-batch ``part``. So accumulation and ranks see
    exactly what one process with the whole batch sees. ``streamed``: the share's images, already
    read, cropped and flipped by the streaming loader's workers (`mae.streaming`)."""
    g = generator(tc.seed, step, STREAM_AUG)
    H = data.img_size
    if tc.augmentation == "rrc":
        boxes = crop_boxes(size, H, H, g, scale=(tc.crop_min_scale, 1.0))
    elif tc.augmentation == "fixed":  # a fixed-size crop (7/8 of the side) at a random place
        side = round(H * 7 / 8)
        offset = torch.randint(0, H - side + 1, (size, 2), generator=g).float()
        boxes = torch.cat([offset, torch.full((size, 2), float(side))], dim=1)
    else:
        boxes = None
    flips = torch.rand(size, generator=g) < 0.5
    noise = sample_noise(config.mask_sampling, size, config.grid_size, config.mask_ratio,
                         generator=g)  # (size, L)
    share = size // tc.accum_steps // info.world
    first = (part * info.world + info.rank) * share
    mine = slice(first, first + share)
    if streamed is not None:
        return normalize(streamed, data.mean, data.std), noise[mine].to(streamed.device)
    idx = order[start:start + size][mine].to(data.images.device)
    images = data.images[idx]
    if boxes is None:
        x = resize_batch(images, out_size, data.mean, data.std)
    else:
        x = augment(images, out_size, boxes[mine], flips[mine], data.mean, data.std)
    return x, noise[mine].to(x.device)


# ----- the loop -------------------------------------------------------------------------------
@dataclass
class PretrainResult:
    """What `pretrain` returns: the trained model, a JSON-ready summary (also written to
    ``pretrain_metrics.json`` in the run folder) and the per-step history."""

    model: MAE
    metrics: dict[str, Any]
    history: list[dict[str, float]]


@holding_folder_lock("out_dir", "pre-training", "run folder")
def pretrain(
    model_config: MAEConfig | Mapping[str, Any], train_config: TrainConfig | Mapping[str, Any],
    out_dir: str | os.PathLike | None = None, resume: bool = False, progress: bool = True,
    dataset: ImageDataset | None = None, data_root: str | None = None, download: bool = False,
    overwrite: bool = False, log=print,
) -> PretrainResult:
    """Pre-train an MAE; returns the model, a summary of the run and its loss history.

    With ``out_dir``, checkpoints (``checkpoint.pt``), the loss history and the summary
    (``pretrain_metrics.json``) are written there. A folder that already holds a run is refused
    unless ``resume=True`` (continue it, with the same recipe and data) or ``overwrite=True``
    (replace it); ``resume=True`` on a folder without a checkpoint starts a new run and says so.
    The folder is locked while the run lasts: a second run into it is refused at once.
    """
    mc = MAEConfig.from_dict(model_config)
    tc = TrainConfig.from_dict(train_config)
    check_hides_a_patch(mc.mask_ratio, mc.num_patches)
    if resume and overwrite:
        raise ConfigError("resume and overwrite exclude each other: continue the run in the "
                          "folder, or replace it.")
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:  # before any data is loaded or step is taken
        check_writable(out, "run folder")
        remove_stale_temporaries(out)
        refuse_existing_run(out, resume, overwrite)
    if tc.tensorboard:  # fail before any data is loaded, not after
        tensorboard_writer(out, 0, check_only=True)
    info, device = init_distributed(tc.device)
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    micro = tc.batch_size // tc.accum_steps
    if micro % info.world:
        raise ConfigError(
            f"batch_size {tc.batch_size} / accum_steps {tc.accum_steps} = {micro} images per "
            f"micro-batch cannot be split evenly over {info.world} ranks: choose a batch_size "
            f"divisible by accum_steps * world size = {tc.accum_steps * info.world}."
        )
    data = dataset if dataset is not None else load_dataset(
        tc.dataset, "train", data_root, img_size=None if tc.dataset.startswith("cifar") else
        mc.img_size, download=download, loader=tc.loader)
    if tc.train_subset:  # an equal share of each class, of the seed; the fingerprint says so
        data = data.sample(tc.train_subset, tc.seed)
    if data.channels != mc.in_chans:
        raise ConfigError(f"{data.name} has {data.channels} channels but in_chans is "
                          f"{mc.in_chans}.")
    data = data.to(device)
    steps_per_epoch = len(data) // tc.batch_size
    if steps_per_epoch < 1:
        raise ConfigError(f"batch_size {tc.batch_size} exceeds the {len(data)} training images: "
                          f"lower batch_size or use more data.")
    total = max(1, round(tc.epochs * steps_per_epoch))
    warmup = round(tc.warmup_epochs * steps_per_epoch)
    stop = min(total, tc.max_steps) if tc.max_steps else total
    peak_lr = tc.base_lr * tc.batch_size / 256

    model = init_model(mc, tc.seed).to(device)
    optimizer = torch.optim.AdamW(param_groups(model, tc.weight_decay), lr=peak_lr,
                                  betas=(tc.beta1, tc.beta2), fused=fused_adamw(device))
    amp = autocast_dtype(tc.precision, device, mc.encoder_dim)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    configs = {"model": mc.to_dict(), "train": tc.to_dict()}

    start, history, wall_before, cpu_before, skipped = 0, [], 0.0, 0.0, {}
    if out is not None and overwrite:
        for name in (CHECKPOINT, "history.csv", "history.json", "pretrain_metrics.json"):
            if info.main:
                (out / name).unlink(missing_ok=True)
    if out is not None and resume:
        if not (out / CHECKPOINT).is_file():
            if info.main:
                log(f"no checkpoint in {out}: starting a new run there")
        else:
            ckpt = resumable_checkpoint(out / CHECKPOINT, configs, data.fingerprint(), amp, device)
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scaler.load_state_dict(ckpt["scaler"])
            set_rng_state(ckpt["rng"])
            start, history, wall_before = ckpt["step"], list(ckpt["history"]), ckpt["wall_time"]
            cpu_before = ckpt.get("cpu_time", 0.0)  # absent before CPU time was recorded
            skipped = dict(ckpt.get("skipped_images") or {})  # unreadable files replaced
            if info.main:
                log(f"resuming {out} at step {start} of {stop}")
    # Training predicts the hidden patches only: the same loss and gradients as model(images).
    net = HiddenPatchLoss(model)
    if info.world > 1:
        net = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None)
    if tc.compile:
        net = torch.compile(net)

    def save(step: int) -> None:
        if out is not None and info.main:
            save_checkpoint(out / CHECKPOINT, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(), "rng": rng_state(), "step": step,
                "history": history, "config": configs, "data": data.fingerprint(),
                "precision": precision_name(amp),
                "wall_time": wall_before + time.perf_counter() - t0,
                "cpu_time": cpu_before + clock.elapsed()["cpu_time_s"], "skipped_images": skipped,
            })
            write_history(out, history)
            if board is not None:
                board.flush()  # the logged steps and the checkpoint agree

    # Snapshots: the model alone at chosen epochs (the schedule figure evaluates them).
    snapshots = {round(e * steps_per_epoch): e for e in tc.snapshots()}
    board = tensorboard_writer(out, start) if tc.tensorboard and info.main else None
    from tqdm import tqdm  # plain: tqdm.auto warns in notebooks without ipywidgets

    bar = tqdm(total=stop, initial=start, desc="pretrain", unit="step",
               disable=not (progress and info.main), dynamic_ncols=True)
    t0, clock = time.perf_counter(), CpuClock()
    model.train()
    stream = stream_batches(
        data, lambda epoch: epoch_order(len(data), tc.seed, epoch), tc.batch_size, tc.accum_steps,
        tc.seed, start, stop, steps_per_epoch, info.rank, info.world, tc.augmentation,
        tc.crop_min_scale, tc.num_workers, device.type == "cuda", tc.skip_bad_images, skipped,
        log if info.main else None) if isinstance(data, FolderFiles) else None
    order, order_epoch = None, -1
    for step in range(start, stop):
        t_step = time.perf_counter()
        epoch, within = divmod(step, steps_per_epoch)
        if epoch != order_epoch:
            order, order_epoch = epoch_order(len(data), tc.seed, epoch), epoch
        lr = lr_at(step, total, warmup, peak_lr, tc.min_lr)  # min_lr unscaled, as the official
        for group in optimizer.param_groups:
            group["lr"] = lr
        step_loss = torch.zeros((), device=device)
        for k in range(tc.accum_steps):
            streamed = None if stream is None else next(stream).to(device, non_blocking=True)
            images, noise = draw_batch(data, order, within * tc.batch_size, tc.batch_size,
                                       mc.img_size, mc, tc, step, info, k, streamed)
            last = k == tc.accum_steps - 1
            sync = net.no_sync() if info.world > 1 and not last else contextlib.nullcontext()
            with sync, autocast(device, amp):
                loss = net(images, noise=noise)[0] / tc.accum_steps
            scaler.scale(loss).backward()
            step_loss += loss.detach()
        step_loss = all_mean(step_loss, info)
        value = step_loss.item()
        if not math.isfinite(value):
            bar.close()
            raise NonFiniteLossError(
                f"loss became {value} at step {step} (epoch {step / steps_per_epoch:.2f}, lr "
                f"{lr:.3g}); the last good checkpoint is kept. Lower base_lr, use fp32 or bf16 "
                f"instead of fp16, or set grad_clip."
            )
        if tc.grad_clip:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - t_step
        history.append({"step": step + 1, "epoch": round((step + 1) / steps_per_epoch, 4),
                        "loss": value, "lr": lr, "images_per_s": tc.batch_size / seconds})
        if board is not None:
            for name in ("loss", "lr", "images_per_s"):
                board.add_scalar(f"pretrain/{name}", history[-1][name], step + 1)
        bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2e}",
                        img_s=f"{tc.batch_size / seconds:.0f}", refresh=False)
        bar.update()
        if tc.checkpoint_every and (step + 1) % tc.checkpoint_every == 0 and step + 1 < stop:
            save(step + 1)
        if step + 1 in snapshots and out is not None and info.main:
            save_checkpoint(out / f"snapshot-epoch{snapshots[step + 1]:g}.pt", {
                "model": model.state_dict(), "config": configs, "step": step + 1,
                "data": data.fingerprint(), "precision": precision_name(amp)})
    bar.close()
    if stop > start or (out is not None and not (out / CHECKPOINT).is_file()):
        save(stop)
    if board is not None:
        board.close()
    wall, spent = wall_before + time.perf_counter() - t0, clock.elapsed()
    done = history[-steps_per_epoch:] if history else []
    metrics = {
        "steps": stop, "total_steps": total, "epochs": stop / steps_per_epoch,
        "resumed_at_step": start,
        "final_loss": float(np.mean([h["loss"] for h in done])) if done else float("nan"),
        "wall_time_s": wall, "images_per_s": stop * tc.batch_size / wall if wall else 0.0,
        "cpu_time_s": cpu_before + spent["cpu_time_s"], "other_load": spent["other_load"],
        "config": configs, "provenance": provenance(str(device)), "device": str(device), "precision": str(amp or torch.float32),
        "world_size": info.world, "data": data.fingerprint(), "loader": loader_of(data),
        "skipped_images": skipped,
    }
    if out is not None and info.main:
        metrics["checkpoint"] = str(out / CHECKPOINT)
        write_json_atomic(out / "pretrain_metrics.json", metrics)
    return PretrainResult(model, metrics, history)
