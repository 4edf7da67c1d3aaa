"""Atomic file writes: every file another process may read while it is written (checkpoints,
run records, caches shared by the runs of a sweep) goes through ``atomic_write``."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

# The mode open() gives a new file before the umask is applied; mkstemp's own 0600 would hide
# run records and caches from colleagues sharing a file system.
NEW_FILE_MODE = 0o666
# atomic_write's temp files: ".<name>.<pid>@<host>.<random>.tmp" beside the target
# (stale_temp_files): the writer's pid and host let a reader tell a killed writer's file at once.
TEMP_PREFIX, TEMP_SUFFIX = ".", ".tmp"
_WRITER = re.compile(r"\.(?P<pid>\d+)@(?P<host>[A-Za-z0-9-]*)\.[A-Za-z0-9_]+" + re.escape(TEMP_SUFFIX) + "$")
# characters of the host name kept in a temp file's name (a file name has at most 255 bytes)
HOST_CHARS = 32


def finite(obj):
    """``obj`` with every non-finite float replaced by None: strict JSON has no NaN or Infinity
    (Python's json writes them, and other readers, e.g. a report in another language, fail)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def to_json(obj, indent: int | None = None, sort_keys: bool = False) -> str:
    """Strict JSON text of ``obj`` (non-finite numbers as null; other objects as str)."""
    return json.dumps(finite(obj), indent=indent, sort_keys=sort_keys, allow_nan=False, default=str)


def current_umask() -> int:
    """The process umask, read without changing it where Linux exposes it (os.umask can only
    be read by setting it, which races with other threads creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:HOST_CHARS]


def temp_prefix(name: str) -> str:
    """The start of this process's temp file names for target ``name``."""
    return f"{TEMP_PREFIX}{name}.{os.getpid()}@{_host()}."


def unwritable(directory: Path) -> str | None:
    """Why no file can be created in the existing ``directory`` (e.g. "Read-only file system"),
    or None. A probe file is written and removed: permission bits do not tell (root writes
    anywhere, except on a read-only file system)."""
    try:
        fd, probe = tempfile.mkstemp(dir=directory, prefix=temp_prefix("probe"), suffix=TEMP_SUFFIX)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        return err.strerror or str(err)
    return None


class _Recorded:
    """A file object that keeps the OSError its ``write`` raised: torch.save's zip writer turns
    it into ``RuntimeError: ... unexpected pos`` (a full disk would lose its name and errno)."""

    def __init__(self, f: BinaryIO):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as err:
            self.error = err
            raise

    def __getattr__(self, name):
        return getattr(self.f, name)


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(f)`` on a temp file in the same directory, fsync, then rename over ``path``:
    readers see the old file or the new one, never half of one; a failed write leaves nothing.
    The file gets the mode a plain ``open(path, "w")`` would give it (the umask is honoured).
    A failed write raises the OSError (e.g. ENOSPC) with ``path`` as its file name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path.name), suffix=TEMP_SUFFIX)
    f = None
    try:
        os.fchmod(fd, NEW_FILE_MODE & ~current_umask())
        with os.fdopen(fd, "wb") as raw:
            f = _Recorded(raw)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        cause = err if isinstance(err, OSError) else getattr(f, "error", None)
        if cause is not None and (cause is not err or err.filename is None):  # say where
            raise OSError(cause.errno, cause.strerror, str(path)) from err
        raise
    return path


# A temp file this old in a directory shared by concurrent writers (the caches, src/cache.py)
# is a killed writer's even when its writer cannot be asked (another host): a write takes seconds.
SHARED_TEMP_MAX_AGE_S = 24 * 3600.0


def stale_temp_files(directory: Path, older_than_s: float = 0.0, dirs: bool = False) -> list[Path]:
    """atomic_write's temp files in ``directory`` (left by a process killed mid-write) not
    modified for ``older_than_s``; with 0, only safe to delete while no other process writes
    there (the run-dir lock). ``dirs``: temp directories too (src/cache.py: verified_dir)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    now = time.time()
    found = []
    for p in directory.iterdir():
        if p.name.startswith(TEMP_PREFIX) and p.name.endswith(TEMP_SUFFIX):
            try:
                if (dirs or p.is_file()) and now - p.stat().st_mtime >= older_than_s:
                    found.append(p)
            except OSError:  # removed meanwhile by its writer
                pass
    return sorted(found)


def writer_alive(temp: Path) -> bool | None:
    """Whether the process that is writing ``temp`` (named by temp_prefix) still runs; None when
    that cannot be told here (another host, or a name without a pid)."""
    match = _WRITER.search(Path(temp).name)
    if match is None or match["host"] != _host():
        return None
    try:
        os.kill(int(match["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # PermissionError: alive, another user's
        return True
    return True


def remove_stale_shared_temp_files(directory: Path) -> list[Path]:
    """In a directory shared by concurrent writers (a cache): remove the temp files (and temp
    directories) of writers that are gone: at once when their pid is not running on this host,
    after SHARED_TEMP_MAX_AGE_S otherwise. Returns what was removed."""
    removed = []
    for p in stale_temp_files(directory, dirs=True):
        alive = writer_alive(p)
        if alive is None:
            try:
                alive = time.time() - p.stat().st_mtime < SHARED_TEMP_MAX_AGE_S
            except OSError:
                continue
        if not alive:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed
