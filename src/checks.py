"""Config checks that run before anything is built or written (docs/runs.md, "Invalid input").

Every component class owns its checks in a ``validate_config(cls, cfg, key)`` classmethod
(``Configurable`` below); the trainer's ``validate`` only calls them. The helpers here read a
value, check it and raise ``ConfigError`` naming the full key, the value and what is allowed.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable, Mapping
from typing import Any

from src.configs import did_you_mean


class ConfigError(ValueError):
    """Invalid configuration, reported before any compute."""


# A value echoed in a message is cut to this many characters (a 10k-character prompt must not
# produce a 10k-character error).
MAX_ECHO = 80


def echo(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= MAX_ECHO else f"{text[:MAX_ECHO - 25]}...' ({len(str(value))} characters)"


def fail(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{key}={echo(value)} is invalid: {allowed}")


def require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise fail(key, value, allowed)


def number(cfg: Mapping, name: str, key: str, *, lo: float | None = None, hi: float | None = None,
           lo_open: bool = False, hi_open: bool = False, integer: bool = False,
           optional: bool = False) -> float | int | None:
    """cfg[name] as a finite number in the given bounds; ``key`` is its full config path.

    integer: must be a whole number (``2.5`` and ``"abc"`` are refused, ``3`` and ``3.0`` pass).
    optional: None (or a missing key) is allowed and returned as None.
    """
    value = cfg.get(name) if hasattr(cfg, "get") else cfg[name]
    if value is None:
        if optional:
            return None
        raise fail(key, value, "a number is required")
    if isinstance(value, bool):
        raise fail(key, value, "must be a number, not a boolean")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise fail(key, value, "must be " + ("an integer" if integer else "a number")) from None
    if not math.isfinite(x):
        raise fail(key, value, "must be finite")
    if integer and x != int(x):
        raise fail(key, value, "must be an integer")
    lo_ok = lo is None or (x > lo if lo_open else x >= lo)
    hi_ok = hi is None or (x < hi if hi_open else x <= hi)
    if not (lo_ok and hi_ok):
        left = "" if lo is None else (f"> {lo}" if lo_open else f">= {lo}")
        right = "" if hi is None else (f"< {hi}" if hi_open else f"<= {hi}")
        raise fail(key, value, "must be " + " and ".join(s for s in (left, right) if s))
    return int(x) if integer else x


def probability(cfg: Mapping, name: str, key: str) -> float:
    return number(cfg, name, key, lo=0.0, hi=1.0)


def choice(cfg: Mapping, name: str, key: str, allowed: Iterable[str]) -> str:
    allowed = tuple(allowed)
    value = cfg.get(name)
    require(value in allowed, key, value, f"allowed: {', '.join(map(str, allowed))}")
    return value


def accepted_arguments(cls: type) -> tuple[set[str], bool]:
    """Constructor argument names of ``cls`` along its MRO while ``__init__`` forwards
    ``**kwargs``; the flag says whether some class accepts arbitrary keywords."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names |= {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)} - {"self"}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return names, False
    return names, True


# The constructor argument through which a part gets the run's length (src/clock.py).
RUN_LENGTH = "run_length"


class Configurable:
    """Mixin: ``validate_config`` refuses keys the constructor does not take, then runs the
    class's own ``check_config``. ``injected`` names arguments the builder passes at run time
    (the backbone, the schedule...), which a config must not set; ``run_length`` (src/clock.py)
    is passed to every part that names it."""

    injected: tuple[str, ...] = ()

    @classmethod
    def validate_config(cls, cfg: Mapping, key: str) -> None:
        names, open_ended = accepted_arguments(cls)
        names -= {*cls.injected, RUN_LENGTH}
        given = [k for k in cfg if not str(k).startswith("_")]
        unknown = sorted(k for k in given if k not in names)
        if unknown and not open_ended:
            near = did_you_mean(f"{key}.{unknown[0]}", [f"{key}.{n}" for n in names])
            raise ConfigError(
                f"{', '.join(f'{key}.{k}' for k in unknown)}: unknown key(s) for {cls.__name__}{near}; "
                f"it takes: {', '.join(sorted(names)) or 'nothing'}"
            )
        cls.check_config(cfg, key)

    @classmethod
    def check_config(cls, cfg: Mapping, key: str) -> None:
        """Value checks of this class (subclasses extend and call super)."""

    @classmethod
    def check_composition(cls, cfg: Mapping, key: str, root: Mapping) -> None:
        """Checks against the rest of the run's config ``root`` (e.g. SIM's reward term needs a
        reward group); called by the trainer's ``validate`` after ``validate_config``."""


def device_memory(device: str) -> tuple[str, int | None]:
    """(name, bytes of memory) of the device a run's ``device`` key resolves to: a CUDA GPU's
    total memory, else this machine's RAM; None when it cannot be told."""
    import os

    import torch

    text = str(device)
    if text.startswith("cuda") or (text == "auto" and torch.cuda.is_available()):
        try:
            index = int(text.split(":")[1]) if ":" in text else 0
            props = torch.cuda.get_device_properties(index)
            return f"cuda:{index} ({props.name})", int(props.total_memory)
        except Exception:  # no such GPU: validate_device says so
            return text, None
    try:
        return "this machine's RAM", os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return "cpu", None


def fits_memory(key: str, value: Any, need_bytes: float, what: str, device: str) -> None:
    """Refuse ``key=value`` when ``what`` (``need_bytes``) alone exceeds the device's memory."""
    name, total = device_memory(device)
    if total is not None and need_bytes > total:
        raise fail(key, value, f"{what} alone take {need_bytes / 2**30:.1f} GiB, more than "
                               f"{name} holds ({total / 2**30:.1f} GiB)")
