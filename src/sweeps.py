"""Declarative sweeps (sweeps/*.yaml) -> one Hydra multirun command (the report: src/report.py).

A sweep file::

    overrides:            # fixed for every run (Hydra overrides, key: value)
      guidance: esd
      trainer.max_steps: 10000
    grid:                 # key: list of values; the sweep runs their product
      guidance.lam: [0.0, 0.5, 1.0]
      seed: [0, 1, 2, 3]
    toy:                  # optional, for a laptop/CI run (`--toy`): replaces `overrides`
      overrides: {...}    # entirely and updates `grid` key by key
      grid: {...}

Run directories are ``<sweep_dir>/<swept key=value,...>``: the fixed overrides are left out of
the name (they are recorded once in ``<sweep_dir>/sweep.yaml``), and nothing depends on the
time, so a resubmitted sweep lands in the same directories and resumes or skips its runs.
"""

from __future__ import annotations

import fnmatch
import itertools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from src.configs import options
from src.report import SEED_KEY, SPEC_RECORD, write_report  # noqa: F401  (scripts/sweep.py)

REPO_ROOT = Path(__file__).resolve().parents[1]
SWEEPS_DIR = REPO_ROOT / "sweeps"
CONFIG_YAML = REPO_ROOT / "conf" / "config.yaml"
LAUNCHERS = ("basic", "submitit_local", "slurm_a100")
# Unquoted Hydra override values may use these characters; anything else is quoted.
_PLAIN_VALUE = re.compile(r"^[A-Za-z0-9_./:@+\-]+$")
_GLOB = re.compile(r"^glob\((.*)\)$")


# -- the sweep file --------------------------------------------------------------------------


@dataclass
class Sweep:
    name: str
    overrides: dict = field(default_factory=dict)
    grid: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        return math.prod(len(v) for v in self.grid.values())

    def points(self) -> list[dict]:
        """Every grid point as {key: value}, in the order Hydra's basic sweeper runs them."""
        keys = list(self.grid)
        return [dict(zip(keys, values)) for values in itertools.product(*self.grid.values())]


def sweep_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    path = SWEEPS_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"no sweep {name_or_path!r}; known: {', '.join(known)}")
    return path


def expand_glob(key: str, values):
    """Hydra's ``glob(pattern)`` over a config group, e.g. ``guidance: glob(*)``: every option
    of conf/<group>/ (src.configs.options), so a new estimator joins every study at once."""
    match = _GLOB.match(values) if isinstance(values, str) else None
    if match is None:
        return values
    return [o for o in options(key) if fnmatch.fnmatchcase(o, match.group(1).strip())]


def _read_yaml(path: Path):
    try:
        with path.open() as f:  # a stream, so that YAML's error marks name the file
            return yaml.safe_load(f)
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML: {err}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} cannot be read: {err}") from None


def _mapping(value, path: Path, key: str) -> dict:
    """A section of a sweep file as a dict (absent or empty: {}), else a ValueError."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{path}: {key} must be a mapping (key: value lines), got {type(value).__name__}")
    return dict(value)


def load_sweep(name_or_path: str, toy: bool = False) -> Sweep:
    path = sweep_path(name_or_path)
    spec = _mapping(_read_yaml(path), path, "the file")
    unknown = set(spec) - {"name", "description", "overrides", "grid", "toy"}
    if unknown:
        raise ValueError(
            f"{path}: unknown keys {sorted(map(str, unknown))}; allowed: name, description, overrides, grid, toy"
        )
    overrides, grid = _mapping(spec.get("overrides"), path, "overrides"), _mapping(spec.get("grid"), path, "grid")
    if toy:
        if "toy" not in spec:
            raise ValueError(f"{path} has no `toy:` section; run it without --toy")
        section = _mapping(spec["toy"], path, "toy")
        overrides = _mapping(section.get("overrides"), path, "toy.overrides")
        grid.update(_mapping(section.get("grid"), path, "toy.grid"))
    grid = {key: expand_glob(key, values) for key, values in grid.items()}
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"{path}: grid.{key} must be a non-empty list, got {values!r}")
    both = set(overrides) & set(grid)
    if both:
        raise ValueError(f"{path}: {sorted(both)} both fixed and swept")
    return Sweep(name=spec.get("name", path.stem), overrides=overrides, grid=grid)


# -- the Hydra command -----------------------------------------------------------------------


def hydra_value(value) -> str:
    """A Python value as it must be written in a Hydra override."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):  # e.g. backbone.view_adherence={side:0.0,back:0.0}
        return "{" + ",".join(f"{hydra_value(str(k))}:{hydra_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    if _PLAIN_VALUE.match(text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def override_value(text: str):
    """The value of one ``key=value`` command-line override, read with Hydra's own grammar (so
    ``{side:0.0,back:0.0}`` is the dict Hydra would pass, not YAML's ``{'side:0.0': None}``);
    a sweep (``a,b``, ``range(...)``) is refused: sweeps belong in the file's grid."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        override = OverridesParser.create().parse_override(text)
    except HydraException as err:
        raise ValueError(f"override {text!r} is not a Hydra override: {err}") from None
    if override.is_sweep_override():
        raise ValueError(f"override {text!r} sweeps {override.key_or_group}: put it in the sweep file's grid")
    value = override.value()
    return "" if value is None and text.endswith("=") else value


def default_sweep_dir(sweep: Sweep, toy: bool) -> Path:
    return Path("multirun") / (f"{sweep.name}_toy" if toy else sweep.name)


def _base_exclude_keys() -> list[str]:
    """The override_dirname exclusions of conf/config.yaml (kept, then extended)."""
    cfg = yaml.safe_load(CONFIG_YAML.read_text())
    try:
        return list(cfg["hydra"]["job"]["config"]["override_dirname"]["exclude_keys"])
    except (KeyError, TypeError):
        return []


def multirun_args(sweep: Sweep, launcher: str, sweep_dir: Path, extra: list[str] = ()) -> list[str]:
    """Arguments after `python -m src.train` that run the whole sweep as one Hydra multirun."""
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher {launcher!r}; valid: {', '.join(LAUNCHERS)}")
    fixed = dict(sweep.overrides)
    if fixed.get("logger") == "wandb":
        fixed["logger.wandb.group"] = sweep.name  # one W&B group per sweep
    # a swept key names the run dirs even where conf/config.yaml leaves it out (experiment: the
    # runs of two presets with the same other values would share one dir)
    exclude = [k for k in _base_exclude_keys() if k not in sweep.grid] + [k for k in fixed if k not in sweep.grid]
    exclude += [o.split("=", 1)[0].lstrip("+~") for o in extra]
    args = ["-m"]
    args += [f"{k}={hydra_value(v)}" for k, v in fixed.items()]
    args += [f"{k}=" + ",".join(hydra_value(v) for v in values) for k, values in sweep.grid.items()]
    args += [
        f"hydra/launcher={launcher}",
        f"hydra.sweep.dir={hydra_value(str(sweep_dir))}",
        f"hydra.job.config.override_dirname.exclude_keys={hydra_value(sorted(set(exclude)))}",
    ]
    return args + list(extra)


def point_overrides(sweep: Sweep) -> list[list[str]]:
    """Each run's overrides (fixed, then swept), as the multirun passes them."""
    fixed = [f"{k}={hydra_value(v)}" for k, v in sweep.overrides.items()]
    return [fixed + [f"{k}={hydra_value(v)}" for k, v in point.items()] for point in sweep.points()]


def record_spec(sweep: Sweep, sweep_dir: Path, launcher: str, force: bool = False) -> None:
    """Write <sweep_dir>/sweep.yaml; refuse to reuse a dir launched with other fixed overrides.

    Run directories are named by swept values only, so runs with different fixed overrides
    (e.g. more steps) would otherwise resume each other's checkpoints.
    """
    path = Path(sweep_dir) / SPEC_RECORD
    if path.exists() and not force:
        old = yaml.safe_load(path.read_text()) or {}
        if old.get("overrides") != sweep.overrides:
            if started_runs(sweep_dir):
                raise ValueError(
                    f"{sweep_dir} holds a sweep with other fixed overrides:\n  was {old.get('overrides')}\n"
                    f"  now {sweep.overrides}\nuse another --sweep-dir (or --force to reuse it anyway)"
                )
            old = {}  # no run of it ever started (e.g. it failed on a typo): the new file wins
        sweep = Sweep(sweep.name, sweep.overrides, {**(old.get("grid") or {}), **sweep.grid})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        yaml.safe_dump(
            {
                "name": sweep.name,
                "launcher": launcher,
                "overrides": sweep.overrides,
                "grid": sweep.grid,
            },
            sort_keys=False,
        )
    )


# Files that show a run of a sweep dir started training (record_spec).
STARTED_MARKERS = ("checkpoints/last.pt", "metrics.json", "metrics.jsonl")


def started_runs(sweep_dir: Path) -> list[Path]:
    """Run dirs under ``sweep_dir`` where training started."""
    found = set()
    for marker in STARTED_MARKERS:
        for hit in Path(sweep_dir).glob(f"*/{marker}"):
            found.add(hit.parent.parent if marker.startswith("checkpoints/") else hit.parent)
    return sorted(found)


def invalid_points(points: list[list[str]], compose: Callable[[list[str]], object]) -> list[tuple[list[str], str]]:
    """(overrides, error) of every grid point whose config does not compose or validate, so
    that a sweep refuses all of them before launching any (``compose``: overrides -> config)."""
    from src.build import validate  # here, not at the top: scripts/report.py needs no torch

    bad = []
    for point in points:
        try:
            validate(compose(point))
        except Exception as err:  # every reason a job would fail before its first step
            text = str(err).strip().splitlines()
            bad.append((point, text[0] if text else type(err).__name__))
    return bad


def describe_invalid(bad: list[tuple[list[str], str]], points: list[list[str]], shown: int = 3) -> str:
    """One paragraph per distinct error, with a few of the points that have it (their swept
    overrides: those that differ between points)."""
    swept = {o for p in points for o in p if sum(o in q for q in points) < len(points)}
    by_error: dict[str, list[list[str]]] = {}
    for point, error in bad:
        by_error.setdefault(error, []).append(point)
    lines = [f"{len(bad)} of {len(points)} grid points are invalid; nothing was launched:"]
    for error, pts in by_error.items():
        lines.append(f"  {error}")
        lines += [f"    at {' '.join(o for o in p if o in swept) or ' '.join(p)}" for p in pts[:shown]]
        if len(pts) > shown:
            lines.append(f"    and {len(pts) - shown} more points")
    return "\n".join(lines)
