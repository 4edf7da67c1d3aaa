"""Finished runs as the studies read them: a sweep directory's runs, their settings and metrics.

Every study (the report, the evaluation, the ShapesWorld tables, the toy claims) reads runs
through this module: a run is a directory with ``.hydra/overrides.yaml`` (what was swept),
``.hydra/config.yaml`` (the composed config), ``metrics.json`` (its final metrics and status) and
``run_info.json`` (src/runinfo.py: where and when each attempt ran).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from src.runinfo import RunRecord
from src.sweeps import SEED_KEY, SPEC_RECORD

FINISHED = "finished"
UNFINISHED = "unfinished"  # no metrics.json


@dataclass
class Run:
    dir: Path
    overrides: dict[str, str]  # key -> value as written on the command line
    metrics: dict[str, float | None] = field(default_factory=dict)  # None: null or NaN
    status: str = UNFINISHED
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.status == FINISHED

    @property
    def seed(self) -> str:
        return self.overrides.get(SEED_KEY, "")


def _parse_override(text: str) -> tuple[str, str]:
    key, _, value = text.partition("=")
    return key.lstrip("+~"), value


def number(v) -> float | None:
    """A finite float, or None for null / NaN / inf / non-numbers (strings, booleans)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def read_run(run_dir: Path, overrides: dict[str, str]) -> Run:
    """A run directory: its metrics.json (strict JSON; older files may hold NaN) and status."""
    path = Path(run_dir) / "metrics.json"
    if not path.exists():
        return Run(Path(run_dir), overrides)
    try:
        data = json.loads(path.read_text())  # python's json reads NaN / Infinity too
    except (json.JSONDecodeError, OSError) as err:
        return Run(Path(run_dir), overrides, status="failed", error=f"unreadable metrics.json: {err}")
    status = str(data.get("status") or FINISHED)
    metrics = {k: number(v) for k, v in data.items()  # numbers and nulls; strings are notes
               if k not in ("status", "error") and (v is None or isinstance(v, (int, float)))
               and not isinstance(v, bool)}
    error = data.get("error")
    return Run(Path(run_dir), overrides, metrics, status, None if error is None else str(error))


def find_runs(sweep_dir: Path) -> list[Run]:
    runs = []
    for overrides_file in sorted(Path(sweep_dir).rglob(".hydra/overrides.yaml")):
        run_dir = overrides_file.parent.parent
        if ".submitit" in run_dir.parts:
            continue
        overrides = dict(_parse_override(o) for o in yaml.safe_load(overrides_file.read_text()) or [])
        runs.append(read_run(run_dir, overrides))
    return runs


def swept_keys(runs: list[Run], sweep_dir: Path) -> list[str]:
    """Grid keys from sweep.yaml when present, else the override keys whose values differ."""
    record = Path(sweep_dir) / SPEC_RECORD
    if record.exists():
        grid = (yaml.safe_load(record.read_text()) or {}).get("grid") or {}
        if grid:
            return list(grid)
    keys = sorted({k for r in runs for k in r.overrides})
    return [k for k in keys if len({r.overrides.get(k) for r in runs}) > 1]


def group_keys(runs: list[Run], sweep_dir: Path) -> list[str]:
    return [k for k in swept_keys(runs, sweep_dir) if k != SEED_KEY]


def _sort_key(value: str | None):
    """Numbers in numeric order, then strings."""
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def group_runs(runs: list[Run], keys: list[str]) -> list[tuple[dict[str, str], list[Run]]]:
    """(setting, its runs sorted by seed) for every setting of ``keys``, settings in order."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(tuple(run.overrides.get(k) for k in keys), []).append(run)
    out = []
    for values in sorted(groups, key=lambda vs: [_sort_key(v) for v in vs]):
        members = sorted(groups[values], key=lambda r: _sort_key(r.seed))
        out.append((dict(zip(keys, values)), members))
    return out


def relative(run: Run, sweep_dir: Path) -> str:
    """A run's key in evaluation.json: its directory relative to the sweep directory."""
    try:
        return str(Path(run.dir).resolve().relative_to(Path(sweep_dir).resolve()))
    except ValueError:
        return str(run.dir)


def run_config(run_dir: Path):
    """The run's composed config (``.hydra/config.yaml``), or None for a directory without one."""
    path = Path(run_dir) / ".hydra" / "config.yaml"
    return OmegaConf.load(path) if path.exists() else None


def machine_of(run_dir: Path) -> dict:
    """Where the run's last attempt was made (its run_info.json): the GPU's name or "cpu", and the
    git revision; nothing for runs recorded before the device was."""
    info = (RunRecord(run_dir).read().attempts or [{}])[-1]
    out = {}
    if "device" in info:
        out["device"] = info.get("gpu") or info["device"]
    if (info.get("git") or {}).get("commit"):
        out["git"] = info["git"]["commit"][:7] + ("+dirty" if info["git"].get("dirty") else "")
    return out
