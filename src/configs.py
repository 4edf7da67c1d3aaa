"""Where the configs live, and what each config group offers.

The ``conf/`` folders are the registry (no list of names anywhere else): a new estimator is
``src/guidance/<name>.py`` plus ``conf/guidance/<name>.yaml``, and every test, benchmark,
table and sweep that asks ``options("guidance")`` picks it up.
"""

from __future__ import annotations

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def options(group: str) -> list[str]:
    """The choices of a config group, sorted: ``options("guidance")`` -> ['csd', 'dsd', ...]."""
    folder = CONF_DIR / group
    if not folder.is_dir():
        raise ValueError(f"no config group {group!r} under {CONF_DIR}")
    return sorted(p.stem for p in folder.glob("*.yaml"))


def guidance_names() -> list[str]:
    """Every estimator: the files of conf/guidance/."""
    return options("guidance")
