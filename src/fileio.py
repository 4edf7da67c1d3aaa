"""Atomic file writes: every file another process may read while it is written (checkpoints,
run records, caches shared by the runs of a sweep) goes through ``atomic_write``."""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

# The mode open() gives a new file before the umask is applied; mkstemp's own 0600 would hide
# run records and caches from colleagues sharing a file system.
NEW_FILE_MODE = 0o666
# atomic_write's temp files: ".<name>.<random>.tmp" beside the target (stale_temp_files).
TEMP_PREFIX, TEMP_SUFFIX = ".", ".tmp"


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


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(f)`` on a temp file in the same directory, fsync, then rename over ``path``:
    readers see the old file or the new one, never half of one; a failed write leaves nothing.
    The file gets the mode a plain ``open(path, "w")`` would give it (the umask is honoured)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TEMP_PREFIX}{path.name}.", suffix=TEMP_SUFFIX)
    try:
        os.fchmod(fd, NEW_FILE_MODE & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.filename is None:  # e.g. a full disk: say where
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise
    return path


# A temp file this old in a directory shared by concurrent writers (the ShapesWorld and text
# embedding caches) is a killed writer's: a write takes seconds.
SHARED_TEMP_MAX_AGE_S = 24 * 3600.0


def stale_temp_files(directory: Path, older_than_s: float = 0.0) -> list[Path]:
    """atomic_write's temp files in ``directory`` (left by a process killed mid-write) not
    modified for ``older_than_s``; with 0, only safe to delete while no other process writes
    there (the run-dir lock)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    now = time.time()
    found = []
    for p in directory.iterdir():
        if p.name.startswith(TEMP_PREFIX) and p.name.endswith(TEMP_SUFFIX):
            try:
                if p.is_file() and now - p.stat().st_mtime >= older_than_s:
                    found.append(p)
            except OSError:  # removed meanwhile by its writer
                pass
    return sorted(found)


def remove_stale_shared_temp_files(directory: Path) -> None:
    """In a cache shared by concurrent runs: remove temp files of writers killed long ago."""
    for p in stale_temp_files(directory, SHARED_TEMP_MAX_AGE_S):
        p.unlink(missing_ok=True)
