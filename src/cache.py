"""On-disk caches that verify themselves (``DISTILLERY_CACHE``, default ~/.cache/distillery).

What a run computes once and reuses (ShapesWorld's rendered data sets, Stable Diffusion's
text embeddings, the metrics' tiny CLIP made in-process) lives under one root shared by every
run of a sweep. Nothing read from there is trusted:

- ``TensorCache``: one tensor per file, written atomically (src/fileio.py) together with the
  key it was made for and the SHA-256 of its bytes. A reader that finds a file it cannot load
  (truncated, bit-flipped), another key (a foreign file), another shape or dtype, or bytes that
  do not match the hash logs what it found and returns None: the caller rebuilds the entry and
  saves it over the bad one, and the run goes on.
- ``verified_dir``: a directory of files (a saved model) built in a temp directory, with a
  manifest of the key and every file's hash written last, then renamed into place; a
  directory whose files do not match its manifest is rebuilt.
- Temp files and directories of writers that are gone (their pid is not running) are removed
  whenever a cache directory is opened (fileio.remove_stale_shared_temp_files).
- A root that cannot be used (a file, a read-only directory, a full disk) is not an error: the
  cache falls back to memory for this process, with one warning naming ``DISTILLERY_CACHE``.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from src.fileio import (
    TEMP_SUFFIX,
    atomic_write,
    remove_stale_shared_temp_files,
    temp_prefix,
    unwritable,
)

log = logging.getLogger(__name__)

CACHE_ENV = "DISTILLERY_CACHE"
CACHE_DEFAULT = "~/.cache/distillery"
# The layout of a TensorCache file; a file of another version is rebuilt, not misread.
FORMAT = 1
# characters of a load error quoted in the warning
MAX_REASON = 200
MANIFEST = ".manifest.json"  # in a verified_dir: {"format", "key", "files": {name: sha256}}
_warned: set[str] = set()


def root() -> Path:
    """The cache root ``DISTILLERY_CACHE`` names (or the default)."""
    return Path(os.environ.get(CACHE_ENV) or CACHE_DEFAULT).expanduser()


def _problem(directory: Path) -> str | None:
    """Why ``directory`` cannot hold cache files, or None."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        return f"{err.strerror or err}" + (f": {err.filename}" if err.filename else "")
    return unwritable(directory)


def warn_unusable(directory: Path, why: str) -> None:
    """One warning per directory per process: the cache works in memory only."""
    if str(directory) not in _warned:
        _warned.add(str(directory))
        log.warning("%s=%s cannot be used for the cache %s (%s): keeping it in memory for this "
                    "run; set %s to a writable directory", CACHE_ENV, os.environ.get(CACHE_ENV, CACHE_DEFAULT),
                    directory, why, CACHE_ENV)


def directory(sub: str, base: Path | None = None) -> Path | None:
    """``<root>/<sub>`` (``base/<sub>`` if given) ready for use, stale temp files of dead
    writers removed; None (and a warning naming DISTILLERY_CACHE) when it cannot be used."""
    d = Path(base if base is not None else root()) / sub
    why = _problem(d)
    if why is not None:
        warn_unusable(d, why)
        return None
    for p in remove_stale_shared_temp_files(d):
        log.warning("removed %s, left by a cache writer that is gone", p)
    return d


def digest(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's bytes (CPU, contiguous)."""
    flat = t.detach().cpu().contiguous().reshape(-1)
    return hashlib.sha256(flat.view(torch.uint8).numpy().tobytes()).hexdigest()


def key_text(key) -> str:
    """A key (any JSON value) as the canonical text stored and compared."""
    return json.dumps(key, sort_keys=True)


class TensorCache:
    """Verified tensors in one cache directory (``directory``; None: memory only)."""

    def __init__(self, sub: str, base: Path | None = None):
        self.dir = directory(sub, base)

    def path(self, name: str) -> Path | None:
        return None if self.dir is None else self.dir / name

    def load(self, name: str, key, shape: Sequence[int] | None = None,
             dtype: torch.dtype | None = None) -> torch.Tensor | None:
        """The tensor saved for ``key`` under ``name`` if it is intact; None when absent or
        damaged (logged; the caller rebuilds and saves over it)."""
        path = self.path(name)
        if path is None or not path.exists():
            return None
        why = self._check(path, key, shape, dtype)
        if isinstance(why, torch.Tensor):
            return why
        log.warning("cache entry %s is unusable (%s): rebuilding it", path, why)
        return None

    @staticmethod
    def _check(path: Path, key, shape, dtype) -> torch.Tensor | str:
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # truncated, bit-flipped zip, not a torch file
            text = str(err).strip().splitlines()
            return f"cannot be read: {type(err).__name__}" + (f": {text[0][:MAX_REASON]}" if text else "")
        if not isinstance(entry, dict) or entry.get("format") != FORMAT:
            return "not a verified cache entry (a foreign file or an older layout)"
        t = entry.get("tensor")
        if not isinstance(t, torch.Tensor):
            return "holds no tensor"
        if entry.get("key") != key_text(key):
            return f"made for another key ({str(entry.get('key'))[:120]})"
        if shape is not None and tuple(t.shape) != tuple(shape):
            return f"shape {tuple(t.shape)}, expected {tuple(shape)}"
        if dtype is not None and t.dtype != dtype:
            return f"dtype {t.dtype}, expected {dtype}"
        if digest(t) != entry.get("sha256"):
            return "its bytes do not match their SHA-256 (damaged on disk)"
        return t

    def save(self, name: str, tensor: torch.Tensor, key) -> None:
        """Write ``tensor`` for ``key`` atomically; a failure (e.g. a full disk) is a warning,
        the run goes on with the tensor in memory."""
        path = self.path(name)
        if path is None:
            return
        t = tensor.detach().cpu().contiguous()
        entry = {"format": FORMAT, "key": key_text(key), "sha256": digest(t), "tensor": t}
        try:
            atomic_write(path, lambda f: torch.save(entry, f))
        except OSError as err:
            log.warning("could not write the cache entry %s (%s): going on without it", path,
                        err.strerror or err)


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _manifest(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): _hash_file(p) for p in sorted(d.rglob("*"))
            if p.is_file() and p.name != MANIFEST}


def _dir_problem(d: Path, key) -> str | None:
    if not d.exists() or (d.is_dir() and not any(d.iterdir())):
        return "absent"
    try:
        saved = json.loads((d / MANIFEST).read_text())
    except (OSError, ValueError):
        return f"no readable {MANIFEST} (written by an older version, or a build was cut short)"
    if not isinstance(saved, dict) or saved.get("key") != key_text(key):
        return "made for another key"
    try:
        files = _manifest(d)
    except OSError as err:
        return f"cannot be read ({err})"
    if files != saved.get("files"):
        bad = sorted(set(files.items()) ^ set((saved.get("files") or {}).items()))
        return f"its files do not match their manifest ({', '.join(sorted({n for n, _ in bad}))})"
    return None


def verified_dir(target: Path, key, build: Callable[[Path], None]) -> Path:
    """``target``, a directory that ``build(dir)`` fills for ``key``: reused when its files
    match its manifest, else built in a temp directory beside it and renamed into place."""
    target = Path(target)
    why = _dir_problem(target, key)
    if why is None:
        return target
    if why != "absent":
        log.warning("cache directory %s is unusable (%s): rebuilding it", target, why)
    if directory("", target.parent) is None:  # unusable: a temp directory of this process
        tmp = Path(tempfile.mkdtemp(prefix="distillery-"))
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)
        build(tmp)
        return tmp
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=temp_prefix(target.name), suffix=TEMP_SUFFIX))
    try:
        build(tmp)
        manifest = {"format": FORMAT, "key": key_text(key), "files": _manifest(tmp)}
        atomic_write(tmp / MANIFEST, lambda f: f.write(json.dumps(manifest).encode()))
        if target.exists() or target.is_symlink():  # the damaged one: moved aside, then removed
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=temp_prefix(target.name), suffix=TEMP_SUFFIX))
            os.replace(target, old / "old")
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:  # another process put its own there meanwhile
            if _dir_problem(target, key) is not None:
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
