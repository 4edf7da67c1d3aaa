"""Checks Hydra runs before it starts a job (``hydra.callbacks`` in conf/config.yaml).

- ``python -m src.train``: the run directory must be a writable directory path (not empty,
  not a file, not a dangling link, not too long: src/rundir.py: make); otherwise Hydra's own
  log set-up fails with a traceback that names no key, or writes the run into the current
  directory (``hydra.run.dir=''``). A finished run in a read-only directory (an archive) is
  skipped with a message (exit 0).
- ``python -m src.train -m ...`` (any launcher): the sweep directory is locked for the sweep
  (a second sweep into it is refused at once, naming the first's pid: rundir.RunLock), and
  every grid point must compose, validate and have a usable run directory name; otherwise all
  invalid points are listed and nothing is launched, rather than the sweep stopping at its
  first bad point after some runs (src/sweeps.py: invalid_points).
- Hydra's basic launcher (jobs in this process): the sweep dir at the start, and after each job
  a line with "k of N done, f failed, ETA" (the submitit launchers print their own).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from src import rundir
from src.configs import unknown_key, unknown_option
from src.fileio import unwritable
from src.loggers import SweepProgress
from src.sweeps import describe_invalid, invalid_points

log = logging.getLogger(__name__)

EXIT_INVALID = 2
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


def _exit(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(EXIT_INVALID)


def _check_dir(config: DictConfig, key: str) -> Path:
    HydraConfig.instance().set_config(config)  # the dir may interpolate ${hydra:...}
    text = str(OmegaConf.select(config, key))
    problem = rundir.path_problem(text, key)  # first: a name too long fails every stat
    if problem:
        _exit(problem)
    path = Path(text)
    if path.is_dir() and unwritable(path) and _finished(path):
        print(f"{path} holds a finished run and cannot be written ({unwritable(path)}): nothing to "
              "do (its results are in metrics.json)", file=sys.stderr, flush=True)
        sys.exit(0)
    try:
        return rundir.make(text, key)
    except rundir.RunDirError as err:
        _exit(str(err))


def _finished(run_dir: Path) -> bool:
    from src.trainer import FINISHED, read_metrics  # torch: only for a read-only run dir

    done = read_metrics(run_dir)
    return done is not None and done.get("status", FINISHED) == FINISHED


def _run_dir_of(cfg: DictConfig) -> Path:
    """One job's run directory (hydra.sweep.subdir may use ${hydra:...}: the job's HydraConfig)."""
    hc = HydraConfig.instance()
    previous = hc.cfg
    hc.set_config(cfg)
    try:
        return Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)
    finally:
        if previous is not None:
            hc.cfg = previous


def sweep_points(config: DictConfig) -> list[list[str]] | None:
    """The override lists of every job of a basic-sweeper multirun (None for other sweepers)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    if config.hydra.sweeper.get("_target_") != BASIC_SWEEPER:
        return None
    params = config.hydra.sweeper.get("params") or {}
    args = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    batches = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(args), None)
    return [list(point) for batch in batches for point in batch]


def check_override_keys(argv: list[str]) -> None:
    """Refuse command-line overrides of keys no config has and options no group has, with the
    nearest ones ("did you mean trainer.max_steps?"), before Hydra composes (its own refusal
    names no alternative and exits 1). Called by src/train.py; arguments that are not
    ``key=value`` overrides are Hydra's."""
    from hydra.core.override_parser.types import ChoiceSweep
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    problems = []
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        try:
            override = parser.parse_override(arg)
            value = override.value()
        except HydraException:  # Hydra reports its own syntax errors
            continue
        key = override.key_or_group  # without its + or ~: an addition is new by intent
        values = value.list if isinstance(value, ChoiceSweep) else [value]
        found = [unknown_key("+" + key if override.is_add() else key)] + [unknown_option(key, v) for v in values]
        problems += [p for p in found if p]
    if problems:
        _exit("\n       ".join(problems))


class CheckBeforeLaunch(Callback):
    sweep_lock: rundir.RunLock | None = None  # held by the launching process for the sweep

    def __init__(self):
        self.progress: SweepProgress | None = None  # set when this process runs the jobs

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        _check_dir(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = _check_dir(config, "hydra.sweep.dir")
        try:
            CheckBeforeLaunch.sweep_lock = rundir.RunLock(sweep_dir, "hydra.sweep.dir").__enter__()
        except rundir.RunDirError as err:
            _exit(f"another sweep runs in this sweep directory: {err}")
        points = sweep_points(config)
        if not points:
            return
        if config.hydra.launcher.get("_target_") == BASIC_LAUNCHER:
            HydraConfig.instance().set_config(config)
            sweep_dir = Path(str(OmegaConf.select(config, "hydra.sweep.dir"))).resolve()
            log.info("sweep dir: %s (%d runs, one after the other in this process)", sweep_dir, len(points))
            self.progress = SweepProgress(points)
        loader = GlobalHydra.instance().config_loader()

        def compose(overrides: list[str]) -> DictConfig:
            cfg = loader.load_sweep_config(config, overrides)
            problem = rundir.path_problem(_run_dir_of(cfg), rundir.SWEEP_SUBDIR_KEY)
            if problem:
                raise rundir.RunDirError(problem)
            with open_dict(cfg):
                del cfg["hydra"]
            return cfg

        bad = invalid_points(points, compose)
        if bad:
            _exit(describe_invalid(bad, points))

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if CheckBeforeLaunch.sweep_lock is not None:
            CheckBeforeLaunch.sweep_lock.__exit__(None, None, None)
            CheckBeforeLaunch.sweep_lock = None

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        if self.progress is not None and config.hydra.job.num == 0:
            self.progress.start()

    def on_job_end(self, config: DictConfig, job_return, **kwargs) -> None:
        from hydra.core.utils import JobStatus

        if self.progress is None:
            return
        what = f"#{config.hydra.job.num} {self.progress.label(list(job_return.overrides or []))}"
        log.info("%s", self.progress.job_ended(what, job_return.status == JobStatus.COMPLETED))
