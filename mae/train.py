"""MAE pre-training (the paper's appendix A.1): AdamW, warm-up + cosine, exact resume, DDP.

Every random draw of a step (which images, their crops and flips, their masks) is a function of
(seed, step) alone, drawn for the whole global batch and then sliced per rank. So a run resumed
from a checkpoint continues bit for bit, and two ranks with half the batch each see exactly what
one process with the whole batch sees.

`pretrain` runs in the steps of the official main_pretrain.py / engine_pretrain.py: the set-up
(`mae.pretrain_setup`), the resume of a stopped run (`mae.resume`), the loop (`run_steps`, one
`train_step` per optimizer step) and the record (``pretrain_metrics.json``).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .augment import augment, crop_boxes, normalize, resize_batch
from .board import tensorboard_writer
from .checkpoint import CHECKPOINT
from .config import MAEConfig, MAEError
from .data import ImageDataset
from .files import holding_folder_lock
from .masking import sample_noise
from .model import MAE, init_model  # noqa: F401  (init_model: `from mae.train import init_model`)
from .pretrain_setup import (
    Run, check_run, loss_network, save_run, save_snapshot, set_up, write_record,
)
from .provenance import CpuClock
from .recipe import TrainConfig
from .resume import resume_run
from .runtime import STREAM_AUG, STREAM_ORDER, Dist, all_mean, autocast, generator
from .streaming import FolderFiles, stream_batches


class NonFiniteLossError(MAEError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# ----- batches --------------------------------------------------------------------------------
def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=generator(seed, epoch, STREAM_ORDER))


@dataclass(frozen=True)
class BatchSource:
    """What a run's batches are drawn from: the images, the model config (its image size and
    masking), the recipe (seed, batch size, accumulation, augmentation) and this process's rank
    among ``info.world``."""

    data: ImageDataset
    config: MAEConfig
    recipe: TrainConfig
    info: Dist = field(default_factory=Dist)


def draw_batch(
    source: BatchSource, step: int, order: torch.Tensor, start: int, part: int = 0,
    streamed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and masking noise of optimizer step ``step``: the global batch of ``batch_size``
    images from ``start`` in the epoch's ``order``, its crops, flips and masks all drawn whole
    from (seed, step); returned is this process's share of accumulation micro-batch ``part``. So
    accumulation and ranks see exactly what one process with the whole batch sees. ``streamed``:
    the share's images, already read, cropped and flipped by the streaming loader's workers
    (`mae.streaming`)."""
    data, config, tc, info = source.data, source.config, source.recipe, source.info
    size = tc.batch_size
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
        x = resize_batch(images, config.img_size, data.mean, data.std)
    else:
        x = augment(images, config.img_size, boxes[mine], flips[mine], data.mean, data.std)
    return x, noise[mine].to(x.device)


def micro_batches(source: BatchSource, step: int, order: torch.Tensor, start: int,
                  stream: Iterator[torch.Tensor] | None, device: torch.device
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The accumulation micro-batches of step ``step`` in turn, this process's share of each;
    with the streaming loader, each share's images are taken from it as they are needed."""
    for part in range(source.recipe.accum_steps):
        streamed = None if stream is None else next(stream).to(device, non_blocking=True)
        yield draw_batch(source, step, order, start, part, streamed)


# ----- the run --------------------------------------------------------------------------------
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
    mc, tc, out = check_run(model_config, train_config, out_dir, resume, overwrite)
    run = set_up(mc, tc, out, dataset, data_root, download)
    resume_run(run, resume, overwrite, log)
    run_steps(run, loss_network(run), progress, log)
    return PretrainResult(run.model, write_record(run), run.history)


def run_steps(run: Run, net: nn.Module, progress: bool, log=print) -> None:
    """The loop: steps ``run.start`` to ``schedule.stop``, each logged (history, TensorBoard,
    progress bar); a checkpoint every checkpoint_every steps and at the end, and the model alone
    at the snapshot epochs."""
    tc, info, data, schedule = run.recipe, run.info, run.data, run.schedule
    start, stop, steps_per_epoch = run.start, schedule.stop, schedule.steps_per_epoch
    snapshots = {round(e * steps_per_epoch): e for e in tc.snapshots()}
    run.board = tensorboard_writer(run.out, start) if tc.tensorboard and info.main else None
    from tqdm import tqdm  # plain: tqdm.auto warns in notebooks without ipywidgets

    bar = tqdm(total=stop, initial=start, desc="pretrain", unit="step",
               disable=not (progress and info.main), dynamic_ncols=True)
    run.t0, run.clock = time.perf_counter(), CpuClock()
    run.model.train()
    stream = stream_batches(
        data, lambda epoch: epoch_order(len(data), tc.seed, epoch), tc.batch_size, tc.accum_steps,
        tc.seed, start, stop, steps_per_epoch, info.rank, info.world, tc.augmentation,
        tc.crop_min_scale, tc.num_workers, run.device.type == "cuda", tc.skip_bad_images,
        run.skipped, log if info.main else None) if isinstance(data, FolderFiles) else None
    source = BatchSource(data, run.model_config, tc, info)
    order, order_epoch = None, -1
    for step in range(start, stop):
        t_step = time.perf_counter()
        epoch, within = divmod(step, steps_per_epoch)
        if epoch != order_epoch:
            order, order_epoch = epoch_order(len(data), tc.seed, epoch), epoch
        batches = micro_batches(source, step, order, within * tc.batch_size, stream, run.device)
        try:
            loss, lr = train_step(run, net, step, batches)
        except NonFiniteLossError:
            bar.close()
            raise
        seconds = time.perf_counter() - t_step
        run.history.append({"step": step + 1, "epoch": round((step + 1) / steps_per_epoch, 4),
                            "loss": loss, "lr": lr, "images_per_s": tc.batch_size / seconds})
        if run.board is not None:
            for name in ("loss", "lr", "images_per_s"):
                run.board.add_scalar(f"pretrain/{name}", run.history[-1][name], step + 1)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}",
                        img_s=f"{tc.batch_size / seconds:.0f}", refresh=False)
        bar.update()
        if tc.checkpoint_every and (step + 1) % tc.checkpoint_every == 0 and step + 1 < stop:
            save_run(run, step + 1)
        if step + 1 in snapshots:
            save_snapshot(run, step + 1, snapshots[step + 1])
    bar.close()
    if stop > start or (run.out is not None and not (run.out / CHECKPOINT).is_file()):
        save_run(run, stop)
    if run.board is not None:
        run.board.close()


def train_step(run: Run, net: nn.Module, step: int,
               batches: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
    """One optimizer step (the official train_one_epoch's body): the schedule's learning rate,
    gradients accumulated over the micro-batches (synchronised across ranks on the last), the
    loss checked finite, clipped where the recipe asks, stepped. Returns the loss (the mean over
    ranks) and the learning rate."""
    tc, schedule, optimizer, scaler = run.recipe, run.schedule, run.optimizer, run.scaler
    lr = schedule.lr(step)
    for group in optimizer.param_groups:
        group["lr"] = lr
    step_loss = torch.zeros((), device=run.device)
    for k, (images, noise) in enumerate(batches):
        last = k == tc.accum_steps - 1
        sync = net.no_sync() if run.info.world > 1 and not last else contextlib.nullcontext()
        with sync, autocast(run.device, run.amp):
            loss = net(images, noise=noise)[0] / tc.accum_steps
        scaler.scale(loss).backward()
        step_loss += loss.detach()
    value = all_mean(step_loss, run.info).item()
    if not math.isfinite(value):
        raise NonFiniteLossError(
            f"loss became {value} at step {step} (epoch {step / schedule.steps_per_epoch:.2f}, lr "
            f"{lr:.3g}); the last good checkpoint is kept. Lower base_lr, use fp32 or bf16 "
            f"instead of fp16, or set grad_clip."
        )
    if tc.grad_clip:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(run.model.parameters(), tc.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return value, lr
