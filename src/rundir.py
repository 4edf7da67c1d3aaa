"""A run directory holds one run and is owned by one live process (docs/runs.md, "One owner, resume, signals").

- ``RunLock``: an exclusive ``flock`` on ``<run_dir>/.lock`` held for a whole attempt. The
  kernel drops it when the process ends, however it ends (SIGKILL, OOM, node reboot), so a
  killed run never leaves its directory stuck; a second process is refused at once.
- ``identity(cfg)``: the config keys that define a run's result. A run dir records the identity
  of its run when first claimed (``run_info.json``), and a run with another identity is refused
  before anything in the dir changes, whether or not a checkpoint exists yet, naming the keys
  that differ (``check_same_run``).
- The one difference that continues a run: a higher ``trainer.max_steps``, unless some part of
  the run read the run's length (a decreasing timestep schedule, SIM's switch to VSD, a
  resolution schedule): then the steps already taken would differ, and the message names the
  key and those parts. Who read it is what the run's clock recorded (src/clock.py), kept in
  run_info.json and in every checkpoint.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from src.checks import ConfigError, echo
from src.fileio import NEW_FILE_MODE, current_umask, to_json, unwritable

LOCK_FILE = ".lock"
# Config keys that do not change a run's result; every other key defines the run.
NON_IDENTITY_KEYS = ("device", "num_threads", "logger", "trainer.progress", "trainer.log_every",
                     "trainer.checkpoint_every", "trainer.step_sleep", "trainer.export",
                     "trainer.val_every", "trainer.deterministic", "representation.export")
# The one key whose change continues a run rather than starting another (module docstring).
EXTENDABLE_KEY = "trainer.max_steps"
# Differing keys listed in a refusal before "and N more".
MAX_KEYS_SHOWN = 8
_MISSING = "<absent>"


class RunDirError(ConfigError):
    """The run directory cannot be used by this run (busy, another run's, not a directory)."""


# --- the directory itself -------------------------------------------------------------------
# Linux's limits when the file system cannot be asked (os.pathconf): bytes per name, per path.
NAME_MAX, PATH_MAX = 255, 4096
# a sweep's run directory names: its swept overrides (Hydra's override_dirname)
SWEEP_SUBDIR_KEY = "hydra.sweep.subdir"


def _limit(path: Path, name: str, default: int) -> int:
    """The file system's limit ``name`` (PC_NAME_MAX, PC_PATH_MAX) where ``path`` would live."""
    for existing in (path.absolute(), *path.absolute().parents):
        try:
            return os.pathconf(existing, name)
        except (OSError, ValueError):  # absent (or its name too long): ask its parent
            continue
    return default


def path_problem(run_dir: Path | str, key: str = "hydra.run.dir") -> str | None:
    """Why ``run_dir`` cannot be a run directory, judged from its name and what is there now
    (nothing is created): empty, a file, a dangling link, a name or path too long."""
    text = str(run_dir)
    if not text.strip():
        return f"{key}={text!r} is empty: a run needs its own directory (e.g. {key}=outputs/my_run)"
    path = Path(text)
    name_max = _limit(path, "PC_NAME_MAX", NAME_MAX)
    for part in path.parts:
        if len(os.fsencode(part)) > name_max:
            fix = ("shorten the swept values, or leave keys out of the name with "
                   "hydra.job.config.override_dirname.exclude_keys" if key == SWEEP_SUBDIR_KEY
                   else f"choose a shorter {key}")
            return (f"{key}={echo(text)}: the name {echo(part)} is {len(os.fsencode(part))} bytes, longer "
                    f"than this file system allows ({name_max}): {fix}")
    path_max = _limit(path, "PC_PATH_MAX", PATH_MAX)
    if len(os.fsencode(str(path.absolute()))) >= path_max:
        return f"{key}={echo(text)} is longer than this file system allows ({path_max} bytes in all)"
    if path.is_symlink() and not path.exists():
        return (f"{key}={echo(text)} is a symbolic link to {os.readlink(path)}, which does not exist: "
                f"remove the link or choose another {key}")
    if path.exists() and not path.is_dir():
        return f"{key}={echo(text)} is a file, not a directory: choose another {key}"
    return None


def make(run_dir: Path | str, key: str = "hydra.run.dir") -> Path:
    """``run_dir`` as an existing writable directory, or a RunDirError naming ``key``."""
    problem = path_problem(run_dir, key)
    if problem:
        raise RunDirError(problem)
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunDirError(f"{key}={run_dir} cannot be created: {err.strerror or err}") from None
    why = unwritable(run_dir)
    if why:
        raise RunDirError(f"{key}={run_dir} cannot be written ({why}): choose a writable {key}")
    return run_dir


class RunLock:
    """``with RunLock(run_dir):`` holds the directory for this process or raises RunDirError."""

    def __init__(self, run_dir: Path, key: str = "hydra.run.dir"):
        self.path, self.key = Path(run_dir) / LOCK_FILE, key
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, NEW_FILE_MODE & ~current_umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunDirError(f"{self.path.parent} is in use by a running process ({holder}); "
                              f"wait for it to end, or use another {self.key}") from None
        # who holds it, for the message above (the lock itself is the flock, not this text)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                     f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n".encode())
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def resume_command(run_dir: Path) -> str:
    """The command that continues the run in ``run_dir`` with its recorded config (src/train.py:
    ``resume=``); absolute, so that it works from any directory."""
    return f"python -m src.train resume={shlex.quote(str(Path(run_dir).resolve()))}"


def resume_sweep_command(args: list[str], sweep_dir: Path) -> str:
    """A multirun's command (``args``: its arguments) with its sweep dir fixed (the default one
    depends on the time): rerun, it skips or resumes its runs and runs the rest."""
    kept = [a for a in args if not a.startswith("hydra.sweep.dir=")]
    return shlex.join(["python", "-m", "src.train", *kept, f"hydra.sweep.dir={Path(sweep_dir).resolve()}"])


# --- identity -------------------------------------------------------------------------------
def identity(cfg: DictConfig) -> dict:
    """The resolved config without NON_IDENTITY_KEYS, as JSON would store it."""
    ident = OmegaConf.to_container(cfg, resolve=True)
    for key in NON_IDENTITY_KEYS:
        *parents, leaf = key.split(".")
        node = ident
        for p in parents:
            node = node.get(p, {})
        node.pop(leaf, None)
    return json.loads(to_json(ident))


def differences(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) for every leaf that differs."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += differences(old.get(k, _MISSING), new.get(k, _MISSING), f"{prefix}{k}.")
        return out
    return [] if old == new else [(prefix.rstrip("."), old, new)]


def describe(diffs: list[tuple[str, Any, Any]]) -> str:
    shown = [f"{k}: {echo(a)} -> {echo(b)}" for k, a, b in diffs[:MAX_KEYS_SHOWN]]
    more = len(diffs) - MAX_KEYS_SHOWN
    return "; ".join(shown) + (f"; and {more} more" if more > 0 else "")


def check_same_run(where: Path | str, recorded: dict, current: dict, readers: list[str] | None,
                   saved_step: Callable[[], int | None] = lambda: None) -> None:
    """Refuse ``current`` unless it is the run ``recorded`` in ``where``, or that run with a
    higher ``trainer.max_steps`` that nothing read. ``readers``: the parts that read the
    recorded run's length (``Clock.readers``; None: a record from before clocks were kept).
    ``saved_step()``: the step the run has reached (None: no step kept)."""
    diffs = differences(recorded, current)
    if not diffs:
        return
    if [k for k, _, _ in diffs] == [EXTENDABLE_KEY]:
        _, old, new = diffs[0]
        if readers:
            raise RunDirError(
                f"{where} holds this run with {EXTENDABLE_KEY}={old}; it cannot be continued to "
                f"{EXTENDABLE_KEY}={new} because {', '.join(readers)} depend(s) on "
                f"{EXTENDABLE_KEY} (the steps taken so far would differ): use a fresh hydra.run.dir")
        lowered = isinstance(new, int) and isinstance(old, int) and new < old
        step = saved_step() if readers is None or lowered else None
        if readers is None and step is not None:
            raise RunDirError(
                f"{where} holds this run with {EXTENDABLE_KEY}={old} but does not record which of its "
                f"parts read {EXTENDABLE_KEY} (a record older than src/clock.py), so it cannot be "
                f"continued to {EXTENDABLE_KEY}={new}: use a fresh hydra.run.dir")
        if lowered and step is not None and step > new:
            raise RunDirError(f"{where} holds this run at step {step}, past {EXTENDABLE_KEY}={new}: "
                              "use a fresh hydra.run.dir for a shorter run")
        return
    raise RunDirError(f"{where} holds a different run; the keys that differ (recorded -> now): "
                      f"{describe(diffs)}. Use a fresh hydra.run.dir, or delete that directory")
