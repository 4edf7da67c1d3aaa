"""Checks Hydra runs before it starts a job (``hydra.callbacks`` in conf/config.yaml).

- ``python -m src.train``: the run directory must be a directory Hydra can create (a file in
  its place would end in Hydra's own traceback before any code of ours runs).
- ``python -m src.train -m ...`` (any launcher): every grid point must compose and validate;
  otherwise all invalid points are listed and nothing is launched, rather than the sweep
  stopping at its first bad point after some runs (src/sweeps.py: invalid_points).
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
from src.loggers import SweepProgress
from src.sweeps import describe_invalid, invalid_points

log = logging.getLogger(__name__)

EXIT_INVALID = 2
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


def _exit(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(EXIT_INVALID)


def _check_dir(config: DictConfig, key: str) -> None:
    HydraConfig.instance().set_config(config)  # the dir may interpolate ${hydra:...}
    try:
        rundir.make(Path(str(OmegaConf.select(config, key))), key)
    except rundir.RunDirError as err:
        _exit(str(err))


def sweep_points(config: DictConfig) -> list[list[str]] | None:
    """The override lists of every job of a basic-sweeper multirun (None for other sweepers)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    if config.hydra.sweeper.get("_target_") != BASIC_SWEEPER:
        return None
    params = config.hydra.sweeper.get("params") or {}
    args = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    batches = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(args), None)
    return [list(point) for batch in batches for point in batch]


class CheckBeforeLaunch(Callback):
    def __init__(self):
        self.progress: SweepProgress | None = None  # set when this process runs the jobs

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        _check_dir(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        _check_dir(config, "hydra.sweep.dir")
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
            with open_dict(cfg):
                del cfg["hydra"]
            return cfg

        bad = invalid_points(points, compose)
        if bad:
            _exit(describe_invalid(bad, points))

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        if self.progress is not None and config.hydra.job.num == 0:
            self.progress.start()

    def on_job_end(self, config: DictConfig, job_return, **kwargs) -> None:
        from hydra.core.utils import JobStatus

        if self.progress is None:
            return
        what = f"#{config.hydra.job.num} {self.progress.label(list(job_return.overrides or []))}"
        log.info("%s", self.progress.job_ended(what, job_return.status == JobStatus.COMPLETED))
