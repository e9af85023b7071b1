"""TensorBoard logs of pre-training (``TrainConfig.tensorboard``): an optional dependency, imported
only when a run asks for it."""

from __future__ import annotations

from pathlib import Path

from .config import ConfigError


def tensorboard_writer(out: Path | None, start: int, check_only: bool = False):
    """A TensorBoard writer for ``<out>/tensorboard``. On resume, events logged after the
    checkpoint's step (by the run that was stopped) are dropped, so the curves show what the
    resumed run did once."""
    if out is None:
        raise ConfigError("tensorboard=True needs a run folder (--out) to write its logs to.")
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:  # torch raises ImportError when tensorboard is missing
        raise ConfigError("tensorboard=True needs the tensorboard package: pip install "
                          "'mae[tensorboard]' (or pip install tensorboard), or leave it off.") from e
    if check_only:
        return None
    return SummaryWriter(str(out / "tensorboard"), purge_step=start + 1 if start else None)
