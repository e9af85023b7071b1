"""File safety in one place: atomic writes (a temporary file, fsync, rename), the cleanup of the
temporaries a killed writer leaves behind, and a clear error for a full disk.

Every file the package writes goes through `atomic_write`, so a reader never sees half a file, a
failed write leaves no temporary behind and the previous version of the file intact.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


class DiskFullError(OSError):
    """No space was left while writing a file; nothing half-written was kept. Its message (one
    line) says so and names the file."""

    def __str__(self) -> str:
        return self.strerror


def temporary_for(path: Path) -> Path:
    """Where ``path`` is written before it is renamed into place: ``.<name>.tmp<pid>`` beside it
    (the pattern `remove_stale_temporaries` recognises)."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """``with atomic_write(path) as f: f.write(...)``: the bytes go to a temporary file, which is
    flushed, fsynced and renamed over ``path`` when the block ends. If the block (or the write)
    fails, the temporary is deleted and ``path`` is left as it was; a full disk is raised as a
    `DiskFullError` naming the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_for(path)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full(path) from e
        raise


def disk_full(path: Path) -> DiskFullError:
    try:
        free = f"{shutil.disk_usage(path.parent).free / 2**30:.2f} GiB free"
    except OSError:
        free = "free space unknown"
    return DiskFullError(errno.ENOSPC, (
        f"the disk is full: cannot write {path} ({free} on its file system); no partial file was "
        f"kept and any previous {path.name} is intact. Free space there, or write to another "
        f"disk (--out)."))


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write through a temporary file and rename, so a reader never sees half a file."""
    with atomic_write(path) as f:
        f.write(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """`write_bytes_atomic` of UTF-8 text."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, payload: Any) -> Path:
    return write_text_atomic(path, json.dumps(payload, indent=1, sort_keys=True, default=str) + "\n")


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that `atomic_write` leaves behind when a process is killed
    mid-write (``.<name>.tmp<pid>``, GBs for a large checkpoint), unless their process still
    runs. Returns what was removed."""
    removed = []
    for tmp in Path(folder).glob(".*.tmp*"):
        pid = tmp.name.rpartition(".tmp")[2]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's
        pass
    return True


def check_writable(folder: str | os.PathLike, what: str = "output folder") -> Path:
    """Create ``folder`` if needed and prove it takes a file, before any work is spent on what
    would be written there. Raises `ConfigError` (which the CLI prints as one line), never a bare
    OSError."""
    from .config import ConfigError

    folder = Path(folder)
    try:
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"{what} {folder} is a file, not a folder: choose another path.")
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"cannot write to {what} {folder} ({e.strerror or e}): choose a "
                          f"writable place.") from e
    return folder
