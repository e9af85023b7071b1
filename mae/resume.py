"""What a stopped pre-training must match to be continued: the recipe (how far to run and how
to checkpoint may change), the resolved precision, the data and the loader it came through; and
the resume itself (`resume_run`), which a pre-training does once it is set up."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .checkpoint import CHECKPOINT, CheckpointError, check_config, load_checkpoint
from .config import MAEConfig
from .pretrain_setup import Run
from .recipe import EXECUTION_KEYS, TrainConfig
from .runtime import precision_name, set_rng_state
from .streaming import loader_of


def resume_run(run: Run, resume: bool, overwrite: bool, log=print) -> None:
    """Start the run, or continue it: with ``overwrite``, the earlier run's checkpoint, history
    and record are removed from the folder; with ``resume``, the folder's checkpoint (once
    `resumable_checkpoint` has checked it) restores the model, the optimizer, the loss scaler,
    the RNG and how far the run had come. Without a checkpoint a new run starts there."""
    out, main = run.out, run.info.main
    if out is not None and overwrite:
        for name in (CHECKPOINT, "history.csv", "history.json", "pretrain_metrics.json"):
            if main:
                (out / name).unlink(missing_ok=True)
    if out is None or not resume:
        return
    if not (out / CHECKPOINT).is_file():
        if main:
            log(f"no checkpoint in {out}: starting a new run there")
        return
    ckpt = resumable_checkpoint(out / CHECKPOINT, run.configs, run.data.fingerprint(), run.amp,
                                run.device)
    run.model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    run.start, run.history, run.wall_before = ckpt["step"], list(ckpt["history"]), ckpt["wall_time"]
    run.cpu_before = ckpt.get("cpu_time", 0.0)  # absent before CPU time was recorded
    run.skipped = dict(ckpt.get("skipped_images") or {})  # unreadable files replaced
    if main:
        log(f"resuming {out} at step {run.start} of {run.schedule.stop}")


def resumable_checkpoint(path: Path, configs: Mapping[str, Any], data: Mapping[str, Any],
                         amp: torch.dtype | None, device: torch.device) -> dict[str, Any]:
    """The checkpoint at ``path``, loaded onto ``device``, once it is shown to continue the run
    these configs, this data fingerprint and this autocast dtype describe; else CheckpointError
    saying what differs and how to resume."""
    ckpt = load_checkpoint(path, expected={"model": configs["model"]}, map_location=device,
                           defaults={"model": MAEConfig().to_dict()})
    _check_resumable(ckpt["config"]["train"], configs["train"])
    _check_same_precision(ckpt, amp, configs["train"]["precision"], path)
    _check_same_data(ckpt.get("data"), data, path)
    return ckpt


def _check_same_data(found: Mapping[str, Any] | None, now: Mapping[str, Any], path: Path) -> None:
    """A run continues on the data it started on, through the same loader (checkpoints from
    before this check carry no fingerprint and are taken as they are)."""
    if found and loader_of(found) != loader_of(now):
        raise CheckpointError(
            f"{path} was trained through the {loader_of(found)} loader, now the {loader_of(now)} "
            f"loader would continue it (other crops of other pixels): resume with --loader "
            f"{loader_of(found)}, or start a new run in another folder.")
    if found and found.get("sha256") != now.get("sha256"):
        raise CheckpointError(
            f"{path} was trained on other data: checkpoint {found.get('sha256', '?')[:16]} "
            f"({found.get('num_images', '?')} images) vs now {now.get('sha256', '?')[:16]} "
            f"({now.get('num_images', '?')} images). Resume with the data it started on, or start "
            f"a new run in another folder.")


def _check_same_precision(ckpt: Mapping[str, Any], amp: torch.dtype | None, asked: str,
                          path: Path) -> None:
    """A run continues in the precision it ran in: ``auto`` may resolve otherwise on another
    machine (bf16 where a CPU has it natively), so the resolved precision is what must match.
    A checkpoint from before it was recorded must be resumed with the precision it was given."""
    found, now = ckpt.get("precision"), precision_name(amp)
    if found is None:
        given = ckpt["config"]["train"].get("precision", "auto")
        if given != asked:
            raise CheckpointError(f"{path} was trained with precision {given!r}: resume with "
                                  f"--precision {given}, or start a new run in another folder.")
    elif found != now:
        raise CheckpointError(
            f"{path} was trained in {found}, but precision {asked!r} runs {now} here: resume "
            f"with --precision {found} (where bf16 is not native to the CPU it is many times "
            f"slower), or start a new run in another folder.")


def _check_resumable(found: Mapping[str, Any], want: Mapping[str, Any]) -> None:
    """The recipe must match to resume; how far to run (max_steps) and checkpointing may change,
    and so may how precision is named (the resolved precision is checked on its own)."""
    free = {"max_steps", "precision", *EXECUTION_KEYS}
    check_config({k: v for k, v in found.items() if k not in free},
                 {k: v for k, v in want.items() if k not in free}, "checkpoint (train config)",
                 defaults={k: v for k, v in TrainConfig().to_dict().items() if k not in free})


