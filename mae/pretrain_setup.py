"""A pre-training run (`mae.train.pretrain`) in its steps, as the official main_pretrain.py has
them: the set-up (configs and run folder checked; device, data, schedule, model, optimizer and
precision), the state every step reads and updates (`Run`), its checkpoints and snapshots, and
its record (``pretrain_metrics.json``). The resume of a stopped run is `mae.resume.resume_run`;
the loop is `mae.train.run_steps`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .board import tensorboard_writer
from .checkpoint import CHECKPOINT, refuse_existing_run, save_checkpoint, write_history
from .config import ConfigError, MAEConfig, check_hides_a_patch
from .data import ImageDataset, load_dataset
from .files import check_writable, remove_stale_temporaries, write_json_atomic
from .hidden import HiddenPatchLoss
from .model import MAE, init_model
from .optim import lr_at, param_groups
from .provenance import CpuClock, provenance
from .recipe import TrainConfig
from .runtime import (
    Dist, autocast_dtype, fused_adamw, init_distributed, precision_name, rng_state,
)
from .streaming import loader_of


@dataclass(frozen=True)
class Schedule:
    """How many steps a run takes and at which learning rate: ``total`` steps for the recipe's
    epochs, of which this invocation runs up to ``stop`` (max_steps); a linear warm-up over
    ``warmup`` steps to ``peak_lr`` (base_lr x batch_size / 256), then a cosine to ``min_lr``
    (unscaled, as the official code has it)."""

    steps_per_epoch: int
    total: int
    warmup: int
    stop: int
    peak_lr: float
    min_lr: float

    @classmethod
    def of(cls, tc: TrainConfig, num_images: int) -> Schedule:
        steps_per_epoch = num_images // tc.batch_size
        if steps_per_epoch < 1:
            raise ConfigError(f"batch_size {tc.batch_size} exceeds the {num_images} training "
                              f"images: lower batch_size or use more data.")
        total = max(1, round(tc.epochs * steps_per_epoch))
        return cls(steps_per_epoch, total, warmup=round(tc.warmup_epochs * steps_per_epoch),
                   stop=min(total, tc.max_steps) if tc.max_steps else total,
                   peak_lr=tc.base_lr * tc.batch_size / 256, min_lr=tc.min_lr)

    def lr(self, step: int) -> float:
        return lr_at(step, self.total, self.warmup, self.peak_lr, self.min_lr)


@dataclass
class Run:
    """A pre-training run once set up: what its steps read and update, and what its checkpoints
    and its record hold."""

    model_config: MAEConfig
    recipe: TrainConfig
    configs: dict[str, Any]  # both, as checkpoints and the record hold them
    out: Path | None  # the run folder; None: the run stays in memory
    info: Dist
    device: torch.device
    data: ImageDataset
    schedule: Schedule
    model: MAE
    optimizer: torch.optim.Optimizer
    amp: torch.dtype | None  # the autocast dtype; None: fp32
    scaler: torch.amp.GradScaler
    # where this invocation starts: step 0, or what the checkpoint of a resumed run holds
    start: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    wall_before: float = 0.0  # seconds spent before the resume
    cpu_before: float = 0.0
    skipped: dict[str, Any] = field(default_factory=dict)  # unreadable files replaced
    # set when the steps begin (`mae.train.run_steps`)
    board: Any = None  # the TensorBoard writer (main process, tensorboard=True)
    t0: float = 0.0  # time.perf_counter() at the first step of this invocation
    clock: CpuClock | None = None

    @property
    def main_with_folder(self) -> bool:
        """Whether this process writes the run folder: there is one, and this is the main rank."""
        return self.out is not None and self.info.main


# ----- set-up ---------------------------------------------------------------------------------
def check_run(
    model_config: MAEConfig | Mapping[str, Any], train_config: TrainConfig | Mapping[str, Any],
    out_dir: str | os.PathLike | None, resume: bool, overwrite: bool,
) -> tuple[MAEConfig, TrainConfig, Path | None]:
    """The configs and the run folder, checked before any data is loaded or step is taken."""
    mc = MAEConfig.from_dict(model_config)
    tc = TrainConfig.from_dict(train_config)
    check_hides_a_patch(mc.mask_ratio, mc.num_patches)
    if resume and overwrite:
        raise ConfigError("resume and overwrite exclude each other: continue the run in the "
                          "folder, or replace it.")
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        check_writable(out, "run folder")
        remove_stale_temporaries(out)
        refuse_existing_run(out, resume, overwrite)
    if tc.tensorboard:  # fail before any data is loaded, not after
        tensorboard_writer(out, 0, check_only=True)
    return mc, tc, out


def set_up(mc: MAEConfig, tc: TrainConfig, out: Path | None, dataset: ImageDataset | None,
           data_root: str | None, download: bool) -> Run:
    """Device (and the DDP process group), data, schedule, model, optimizer and precision."""
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
    data = training_data(mc, tc, dataset, data_root, download).to(device)
    schedule = Schedule.of(tc, len(data))
    model = init_model(mc, tc.seed).to(device)
    optimizer = torch.optim.AdamW(param_groups(model, tc.weight_decay), lr=schedule.peak_lr,
                                  betas=(tc.beta1, tc.beta2), fused=fused_adamw(device))
    amp = autocast_dtype(tc.precision, device, mc.encoder_dim)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    configs = {"model": mc.to_dict(), "train": tc.to_dict()}
    return Run(mc, tc, configs, out, info, device, data, schedule, model, optimizer, amp, scaler)


def training_data(mc: MAEConfig, tc: TrainConfig, dataset: ImageDataset | None,
                  data_root: str | None, download: bool) -> ImageDataset:
    """``dataset``, else the recipe's training split; cut to train_subset (an equal share of each
    class, of the seed: the fingerprint says so). Its channels must be the model's."""
    data = dataset if dataset is not None else load_dataset(
        tc.dataset, "train", data_root, img_size=None if tc.dataset.startswith("cifar") else
        mc.img_size, download=download, loader=tc.loader)
    if tc.train_subset:
        data = data.sample(tc.train_subset, tc.seed)
    if data.channels != mc.in_chans:
        raise ConfigError(f"{data.name} has {data.channels} channels but in_chans is "
                          f"{mc.in_chans}.")
    return data


def loss_network(run: Run) -> nn.Module:
    """What the steps call: the loss on the hidden patches only (the same loss and gradients as
    model(images)), wrapped for DDP across ranks and compiled where the recipe asks."""
    net = HiddenPatchLoss(run.model)
    if run.info.world > 1:
        device = run.device
        net = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None)
    if run.recipe.compile:
        net = torch.compile(net)
    return net


# ----- checkpoints and the record -------------------------------------------------------------
def save_run(run: Run, step: int) -> None:
    """The checkpoint a resume continues from (with the loss history beside it), in the run
    folder by the main process."""
    if not run.main_with_folder:
        return
    save_checkpoint(run.out / CHECKPOINT, {
        "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict(), "rng": rng_state(), "step": step,
        "history": run.history, "config": run.configs, "data": run.data.fingerprint(),
        "precision": precision_name(run.amp),
        "wall_time": run.wall_before + time.perf_counter() - run.t0,
        "cpu_time": run.cpu_before + run.clock.elapsed()["cpu_time_s"],
        "skipped_images": run.skipped,
    })
    write_history(run.out, run.history)
    if run.board is not None:
        run.board.flush()  # the logged steps and the checkpoint agree


def save_snapshot(run: Run, step: int, epoch: float) -> None:
    """The model alone at a chosen epoch (the schedule figure evaluates them)."""
    if run.main_with_folder:
        save_checkpoint(run.out / f"snapshot-epoch{epoch:g}.pt", {
            "model": run.model.state_dict(), "config": run.configs, "step": step,
            "data": run.data.fingerprint(), "precision": precision_name(run.amp)})


def write_record(run: Run) -> dict[str, Any]:
    """The summary of the run, JSON-ready; written to ``pretrain_metrics.json`` in the folder."""
    tc, stop, steps_per_epoch = run.recipe, run.schedule.stop, run.schedule.steps_per_epoch
    wall, spent = run.wall_before + time.perf_counter() - run.t0, run.clock.elapsed()
    done = run.history[-steps_per_epoch:] if run.history else []
    metrics = {
        "steps": stop, "total_steps": run.schedule.total, "epochs": stop / steps_per_epoch,
        "resumed_at_step": run.start,
        # what earlier attempts of this run spent up to the checkpoint it resumed from (0 for a
        # run that never stopped): a caller timing only this process adds them (ablation.ipynb)
        "earlier_wall_time_s": run.wall_before, "earlier_cpu_time_s": run.cpu_before,
        "final_loss": float(np.mean([h["loss"] for h in done])) if done else float("nan"),
        "wall_time_s": wall, "images_per_s": stop * tc.batch_size / wall if wall else 0.0,
        "cpu_time_s": run.cpu_before + spent["cpu_time_s"], "other_load": spent["other_load"],
        "config": run.configs, "provenance": provenance(str(run.device)),
        "device": str(run.device), "precision": str(run.amp or torch.float32),
        "world_size": run.info.world, "data": run.data.fingerprint(), "loader": loader_of(run.data),
        "skipped_images": run.skipped,
    }
    if run.main_with_folder:
        metrics["checkpoint"] = str(run.out / CHECKPOINT)
        write_json_atomic(run.out / "pretrain_metrics.json", metrics)
    return metrics
