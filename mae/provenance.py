"""What every result carries: code version, environment, device, time."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

# File safety lives in mae.files; these names are also importable from here, their first home.
from .files import (  # noqa: F401
    check_writable, remove_stale_temporaries, write_bytes_atomic, write_json_atomic,
    write_text_atomic,
)


def git_state(repo: str | os.PathLike | None = None) -> dict[str, Any]:
    """Commit of the code and whether it had uncommitted changes (outside results/)."""
    cwd = Path(repo) if repo else Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                              check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--", ".", ":(exclude)results"))
    except (subprocess.CalledProcessError, FileNotFoundError, OSError):
        return {"git_commit": "unknown", "git_dirty": None}
    return {"git_commit": commit, "git_dirty": dirty}


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({torch.get_num_threads()} threads)"


def versions() -> dict[str, str]:
    import numpy
    import torch

    from . import __version__

    out = {"python": platform.python_version(), "torch": torch.__version__,
           "numpy": numpy.__version__, "mae": __version__}
    for name in ("torchvision", "papermill"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = "absent"
    return out


def provenance(device: str = "cpu") -> dict[str, Any]:
    """Commit, time, device and versions; and the command line, when run as ``python -m mae``."""
    import shlex
    import sys

    out = {
        **git_state(), "utc_time": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": device, "device_name": device_name(device), "versions": versions(),
    }
    if sys.argv and Path(sys.argv[0]).name == "__main__.py" and Path(sys.argv[0]).parent.name \
            == "mae":
        out["command"] = "python -m mae " + shlex.join(sys.argv[1:])
    return out


class CpuClock:
    """Wall time, this process's CPU time (with its waited-for children, e.g. torchrun's ranks)
    and the whole machine's busy CPU time, so that a run's minutes can be read as a speed figure:
    ``other_load`` is how many cores other processes kept busy on average while it ran."""

    def __init__(self) -> None:
        self.start = self._read()

    @staticmethod
    def _read() -> tuple[float, float, float | None]:
        import resource
        import time

        own = sum(getattr(resource.getrusage(who), f) for who in (
            resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN) for f in ("ru_utime", "ru_stime"))
        try:  # user nice system idle iowait irq softirq steal: busy = all but idle and iowait
            ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:9]]
            busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            busy = None
        return time.perf_counter(), own, busy

    def elapsed(self) -> dict[str, float | None]:
        (w0, c0, b0), (w1, c1, b1) = self.start, self._read()
        wall, cpu = w1 - w0, c1 - c0
        other = None if b0 is None or b1 is None else max(0.0, (b1 - b0) - cpu) / max(wall, 1e-9)
        return {"wall_time_s": wall, "cpu_time_s": cpu, "other_load": other,
                "cpu_count": os.cpu_count()}
