"""Run recipes: how to pre-train (`TrainConfig`) and how to evaluate (`EvalConfig`) an encoder.

Frozen dataclasses built and validated through `from_dict`, like `mae.config.MAEConfig`: every
field has a help text (the CLI's flags are generated from them) and a checked range.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from .config import ConfigBase, ConfigError, divisors, unknown_key_error


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUGMENTATIONS = ("rrc", "fixed", "none")
# TrainConfig fields that change how a run is executed, not what it computes.
EXECUTION_KEYS = ("device", "num_threads", "compile", "checkpoint_every", "tensorboard",
                  "num_workers", "skip_bad_images", "snapshot_epochs")
LOADERS = ("auto", "memory", "stream")
# EvalConfig fields that change where an evaluation runs, not what it computes.
EVAL_EXECUTION_KEYS = ("device",)


def _f(default: Any, help: str, low: float | None = None, high: float | None = None,
       open_low: bool = False) -> Any:
    """A field with its help text and, for numbers, its range: [low, high], or (low, high] with
    ``open_low``. Numbers must also be finite."""
    return dataclasses.field(default=default, metadata={
        "help": help, "low": low, "high": high, "open_low": open_low})


def check_ranges(config: Any) -> None:
    """Raise ConfigError naming the first numeric field that is not finite or out of its range,
    with the field's meaning, so the message says what the number is for."""
    for f in dataclasses.fields(config):
        value, meta = getattr(config, f.name), f.metadata
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        low, high = meta.get("low"), meta.get("high")
        bad = not math.isfinite(value) or (low is not None and (
            value <= low if meta.get("open_low") else value < low)) or (
            high is not None and value > high)
        if bad:
            span = ("(" if meta.get("open_low") else "[") + f"{'-inf' if low is None else low}, " \
                + ("inf)" if high is None else f"{high}]")
            raise ConfigError(f"{f.name} must be a finite number in {span}, got {value!r} "
                              f"({meta['help']}).")


@dataclass(frozen=True)
class TrainConfig(ConfigBase):
    """Pre-training recipe (the paper's appendix A.1; the ablation tiers in ablations/tiers.yaml scale it)."""

    dataset: str = _f("cifar10", "cifar10, cifar100, imagenette or folder:/path")
    train_subset: int = _f(0, "train on N images, an equal share of each class drawn with the "
                              "seed (0: all)", 0)
    epochs: float = _f(8.0, "pre-training epochs (the schedule's length)", 0, open_low=True)
    batch_size: int = _f(256, "effective batch per optimizer step, over all ranks and accumulation",
                         1)
    accum_steps: int = _f(1, "gradient accumulation steps per optimizer step", 1)
    base_lr: float = _f(1e-3, "learning rate per 256 images: lr = base_lr * batch_size / 256", 0)
    min_lr: float = _f(0.0, "learning rate at the end of the cosine decay (absolute, not scaled "
                            "by batch_size / 256: the official --min_lr)", 0)
    warmup_epochs: float = _f(1.0, "linear warm-up, in epochs", 0)
    weight_decay: float = _f(0.05, "AdamW weight decay (not on biases, norms and tokens)", 0)
    beta1: float = _f(0.9, "AdamW beta1", 0, 0.9999)
    beta2: float = _f(0.95, "AdamW beta2 (0.95 in the paper)", 0, 0.9999)
    grad_clip: float = _f(0.0, "clip the gradient norm to this value (0: off, as in the paper)", 0)
    augmentation: str = _f("rrc", "rrc: random-resized crop + flip; fixed: fixed-size crop + "
                                  "flip; none (Table 1e)")
    crop_min_scale: float = _f(0.2, "smallest crop area fraction of random-resized crop", 0, 1,
                               open_low=True)
    loader: str = _f("auto", "memory: decode the set once and hold it (crops on the device); "
                             "stream: worker processes read and crop each JPEG (image folders "
                             "too big for memory; crops of the full image, as the official "
                             "code); auto: stream folder: sets, hold the named ones in memory")
    num_workers: int = _f(4, "worker processes of the streaming loader (0: in this process)", 0)
    skip_bad_images: bool = _f(False, "streaming loader: train on the next readable image in "
                                      "place of one that cannot be read (corrupt, empty, not an "
                                      "image, a dangling link), each named in the log and in the "
                                      "run's records (off: stop, naming the file)")
    seed: int = _f(0, "seed of initialisation, data order, augmentation and masks")
    precision: str = _f("auto", "auto (bf16 on CUDA, and on a CPU with native bf16 for encoders "
                                "at least 192 wide; else fp32), fp32, bf16 or fp16 (+ scaler)")
    compile: bool = _f(False, "torch.compile the model (pays on GPU, not on CPU)")
    device: str = _f("auto", "auto, cpu, cuda or cuda:N")
    checkpoint_every: int = _f(500, "save a checkpoint every N optimizer steps (and at the end)", 0)
    snapshot_epochs: str = _f("", "also keep the model at these epochs, comma-separated (e.g. "
                                  "25,50,100): <out>/snapshot-epoch<E>.pt, weights and configs "
                                  "only, evaluated like the run's checkpoint")
    max_steps: int = _f(0, "stop after N optimizer steps of the full schedule (0: run it all)", 0)
    num_threads: int = _f(0, "CPU threads for torch (0: leave torch's default)", 0)
    tensorboard: bool = _f(False, "also log loss, lr and images/s per step to <out>/tensorboard "
                                  "(needs the tensorboard package: pip install 'mae[tensorboard]')")

    def validate(self) -> None:
        check_ranges(self)
        if self.batch_size % self.accum_steps:
            raise ConfigError(f"batch_size {self.batch_size} is not divisible by accum_steps "
                              f"{self.accum_steps}: choose accum_steps among "
                              f"{divisors(self.batch_size)[:8]}.")
        if self.precision not in PRECISIONS:
            raise unknown_key_error(self.precision, list(PRECISIONS), "precision")
        if self.augmentation not in AUGMENTATIONS:
            raise unknown_key_error(self.augmentation, list(AUGMENTATIONS), "augmentation")
        if self.loader not in LOADERS:
            raise unknown_key_error(self.loader, list(LOADERS), "loader")
        self.snapshots()  # checked here, so that a bad list fails before any training

    def snapshots(self) -> list[float]:
        """The epochs of ``snapshot_epochs``, checked: positive numbers within the schedule."""
        try:
            epochs = [float(e) for e in self.snapshot_epochs.split(",") if e.strip()]
        except ValueError:
            raise ConfigError(f"snapshot_epochs {self.snapshot_epochs!r} is not a comma-separated "
                              f"list of epochs, e.g. 25,50,100.") from None
        bad = [e for e in epochs if not 0 < e <= self.epochs]
        if bad:
            raise ConfigError(f"snapshot_epochs {bad[0]:g} is outside the schedule (0, "
                              f"{self.epochs:g}]: give epochs between 0 and epochs.")
        return epochs


@dataclass(frozen=True)
class EvalConfig(ConfigBase):
    """Evaluation of a pre-trained encoder: linear probe, kNN, fine-tuning (appendix A.2, A.3)."""

    features: str = _f("cls", "encoder features for probe and kNN: cls or mean (of patch tokens)")
    batch_size: int = _f(512, "batch size of feature extraction", 1)
    probe_epochs: int = _f(90, "linear probe epochs on cached features (90 in the paper)", 1)
    probe_lr: float = _f(0.1, "linear probe base learning rate (per 256; SGD momentum 0.9)", 0,
                         open_low=True)
    probe_batch_size: int = _f(1024, "linear probe batch size", 1)
    probe_weight_decay: float = _f(0.0, "linear probe weight decay (0 in the paper)", 0)
    knn_k: int = _f(20, "neighbours of the kNN classifier", 1)
    knn_temperature: float = _f(0.07, "temperature of the kNN vote weights exp(sim / T)", 0,
                                open_low=True)
    ft_epochs: float = _f(2.0, "fine-tuning epochs (fractions allowed)", 0, open_low=True)
    ft_batch_size: int = _f(128, "fine-tuning batch size", 1)
    ft_base_lr: float = _f(1e-3, "fine-tuning lr per 256 images", 0, open_low=True)
    ft_layer_decay: float = _f(0.75, "layer-wise learning-rate decay", 0, 1, open_low=True)
    ft_weight_decay: float = _f(0.05, "fine-tuning weight decay", 0)
    ft_warmup_epochs: float = _f(0.2, "fine-tuning warm-up epochs", 0)
    ft_drop_path: float = _f(0.1, "stochastic depth rate", 0, 0.99)
    ft_label_smoothing: float = _f(0.1, "label smoothing", 0, 1)
    ft_mixup: float = _f(0.8, "mixup alpha (0: off)", 0)
    ft_cutmix: float = _f(1.0, "cutmix alpha (0: off)", 0)
    ft_reprob: float = _f(0.0, "random erasing probability per image (0: off; 0.25 in the paper)",
                          0, 1)
    seed: int = _f(0, "seed of the probe and fine-tuning")
    device: str = _f("auto", "where features are extracted and fine-tuning runs: auto (CUDA when "
                             "present, else the CPU), cpu, cuda or cuda:N")
    precision: str = _f("auto", "autocast of feature extraction and fine-tuning: auto (bf16 on "
                                "CUDA, and on a CPU with native bf16 for encoders >= 192 wide; "
                                "else fp32), fp32, bf16 or fp16")

    def validate(self) -> None:
        check_ranges(self)
        if self.features not in ("cls", "mean"):
            raise unknown_key_error(self.features, ["cls", "mean"], "features")
        if self.precision not in PRECISIONS:
            raise unknown_key_error(self.precision, list(PRECISIONS), "precision")
