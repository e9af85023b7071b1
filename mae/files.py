"""File safety in one place: atomic writes (a temporary file, fsync, rename), the cleanup of the
temporaries a killed writer leaves behind, a clear error for a full disk, and the lock that keeps
two processes out of one run folder.

Every file the package writes goes through `atomic_write`, so a reader never sees half a file, a
failed write leaves no temporary behind and the previous version of the file intact.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .config import MAEError


class DiskFullError(MAEError, OSError):
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


CACHE_ENV = "MAE_CACHE"


def cache_dir() -> Path:
    """Where downloads and decoded datasets are kept: ``$MAE_CACHE``, else ``~/.cache/mae``."""
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/mae").expanduser()


LOCK_FILE = ".lock"


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold ``folder``'s lock (an exclusive ``flock`` of ``folder/.lock``) for the block, or raise
    `ConfigError` at once, naming the folder and the process that holds it. The lock file says
    who holds it (pid, host, since when) and is removed on release."""
    import fcntl

    from .config import ConfigError

    path = Path(folder) / LOCK_FILE
    while True:
        f = open(path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "a process that did not say which"
            f.close()
            raise ConfigError(f"{folder} is in use by another {what} ({holder}): wait for it to "
                              f"end (or stop it), or choose another --out.") from None
        try:  # the file may have been removed by its last holder between our open and lock
            same = os.fstat(f.fileno()).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        f.close()
    try:
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}, since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        f.flush()
        yield
    finally:
        path.unlink(missing_ok=True)  # before the lock goes: a waiting opener then retries
        f.close()


def holding_folder_lock(parameter: str, what: str, kind: str = "folder"):
    """Decorator: the function runs holding the `folder_lock` of the folder passed as its
    argument ``parameter`` (created first, `check_writable`), released when it returns or fails,
    even while a notebook keeps the traceback. A folder it created is removed again when the
    function fails leaving it empty (a refused option leaves no empty run folder behind).
    Without a folder (None), or in a DDP rank other than the main one (``RANK`` > 0: the ranks
    share one folder), it runs without."""

    def decorate(function):
        signature = inspect.signature(function)

        @functools.wraps(function)
        def locked(*args, **kwargs):
            folder = signature.bind(*args, **kwargs).arguments.get(parameter)
            if folder is None or int(os.environ.get("RANK", "0")):
                return function(*args, **kwargs)
            created = [p for p in (Path(folder), *Path(folder).parents) if not p.exists()]
            try:
                with folder_lock(check_writable(folder, kind), what):
                    return function(*args, **kwargs)
            except BaseException:
                for path in created:  # the innermost first; rmdir removes only empty ones
                    try:
                        path.rmdir()
                    except OSError:
                        break
                raise

        return locked

    return decorate
