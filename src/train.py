"""Entry point: ``python -m src.train [group=option ...] [key=value ...]`` (Hydra).

Examples::

    python -m src.train                                   # the default job
    python -m src.train backbone=mog2d representation=particles guidance=esd
    python -m src.train experiment=esd_toy guidance=esd guidance.lam=1 hydra.run.dir=out/esd
    python -m src.train --cfg job                         # print the composed config
    python -m src.train --cfg job --provenance guidance=sim   # ... with each value's source file
    python -m src.train --cfg job --resolve               # print the composed config, resolved
    python -m src.train resume=outputs/2026-12-07/14-09-58_sds   # continue a stopped run
    python -m src.train --help                            # groups, options, common commands

Every run logs its folder and the command that resumes it when it starts and when it stops.
``resume=RUN_DIR`` continues the run in RUN_DIR with its own recorded config
(``RUN_DIR/.hydra/config.yaml``), whatever conf/ holds now; further ``key=value`` arguments
change values of it (``trainer.max_steps`` to extend it, or keys that do not define the run such
as ``device``; any other change is refused by the run dir's identity check, src/rundir.py).

Invalid configs fail before any compute with a message naming the key and what is allowed.
Exit codes: 0 finished, 2 invalid config or unusable run dir (or missing weights), 3 diverged,
128 + N stopped by signal N (after writing a checkpoint), 1 anything else. A multirun stopped by
a signal ends with its current job (checkpointed) and starts no other: it exits 128 + N too.

Hydra's own ``.hydra/`` files are written by the run (src/trainer.py: run), once it owns the
run directory (``hydra.output_subdir: null`` in conf/config.yaml): a refused run changes nothing
there. Beside them, ``.hydra/provenance.yaml`` says which file (or the command line) set each
key (src/provenance.py). ``src/hooks.py`` checks the run or sweep directory, and every point of a sweep, before
Hydra starts.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from src import provenance, rundir
from src.configs import CONF_DIR

log = logging.getLogger("src.train")

EXIT_INVALID, EXIT_DIVERGED = 2, 3
# Hydra's job log; a run dir holding nothing else was created by this failed run alone.
HYDRA_LOG = "train.log"
# An error message longer than this is cut (a 10k-character value must not make a 10 kB error).
MAX_ERROR_CHARS = 2000
RESUME_KEY = "resume"  # resume=RUN_DIR (module docstring)
_ABSENT = object()
BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
# Hydra's job log format (hydra/conf/hydra/job_logging/default.yaml), for runs resumed without it
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


class RunFailed(RuntimeError):
    """A job of a multirun failed: raised (not sys.exit) so that the launcher runs the others."""


def short(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else f"{text[:MAX_ERROR_CHARS]}... ({len(text)} characters)"


def _discard_empty_run_dir(run_dir: Path) -> None:
    """A run that failed before owning its dir leaves nothing (Hydra made the dir and its log)."""
    try:
        if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {HYDRA_LOG}:
            (run_dir / HYDRA_LOG).unlink(missing_ok=True)
            run_dir.rmdir()
    except OSError:
        pass


def hydra_files(hc, cfg: DictConfig) -> dict[str, str]:
    """What Hydra writes into <run_dir>/.hydra when output_subdir is set, and the source of each
    key of ``cfg`` (src/provenance.py)."""
    files = {".hydra/hydra.yaml": OmegaConf.to_yaml(HydraConfig.instance().cfg),
             ".hydra/overrides.yaml": OmegaConf.to_yaml(hc.overrides.task)}
    try:
        where = provenance.sources(cfg, list(hc.overrides.task), hc.job.config_name)
    except Exception as err:  # a record about the run must never stop the run
        log.warning("could not trace the config's sources (.hydra/provenance.yaml not written): %s", err)
    else:
        files[".hydra/provenance.yaml"] = provenance.to_yaml(where)
    return files


def fail(run_dir: Path, err: BaseException, code: int, multirun: bool):
    _discard_empty_run_dir(run_dir)
    message = f"error: {short(str(err))}"
    print(message, file=sys.stderr, flush=True)
    if multirun:
        raise RunFailed(message) from None
    sys.exit(code)


def run_and_report(cfg: DictConfig, run_dir: Path, files: dict[str, str] | None, multirun: bool):
    """src.trainer.run with its errors turned into exit codes (module docstring)."""
    from src.trainer import Diverged, Interrupted, run

    try:
        try:
            metrics, _ = run(cfg, run_dir, files)
        except InstantiationException as wrapped:  # report the builder's own error, not Hydra's
            raise (wrapped.__cause__ or wrapped) from None
    except (ValueError, OSError) as err:  # config, run dir, prompt, missing weights, full disk
        fail(run_dir, err, EXIT_INVALID, multirun)
    except Diverged as err:
        fail(run_dir, err, EXIT_DIVERGED, multirun)
    except Interrupted as err:
        # a stopped multirun launches no further job: the exit passes through Hydra's launcher
        # (which catches exceptions only); the rerun of the sweep resumes this run
        print(f"error: {err}", file=sys.stderr, flush=True)
        hc = HydraConfig.get() if HydraConfig.initialized() else None
        if multirun and hc is not None and str(hc.launcher.get("_target_", "")) == BASIC_LAUNCHER:
            # (the submitit launchers say it themselves, in the process that launched the sweep)
            print("sweep stopped, no further job started; resume it with: "
                  f"{rundir.resume_sweep_command(sys.argv[1:], Path(str(hc.sweep.dir)))}",
                  file=sys.stderr, flush=True)
        sys.exit(err.exit_code)
    numbers = {k: round(v, 4) for k, v in metrics.items() if isinstance(v, (int, float))}
    log.info("metrics: %s", numbers)
    log.info("finished: %s", run_dir.resolve())
    return metrics


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    hc = HydraConfig.get()
    metrics = run_and_report(cfg, Path(hc.runtime.output_dir), hydra_files(hc, cfg), hc.mode == RunMode.MULTIRUN)
    return metrics.get("precision", metrics.get("mode_coverage"))


PROVENANCE = "--provenance"


def print_provenance(args: list[str]) -> int:
    """``--cfg job --provenance [overrides]``: the job's config as ``--cfg job`` prints it, each
    value followed by ``# <the file that set it>`` or ``# command line``."""
    from hydra import compose, initialize_config_dir

    rest, i = [], 0
    while i < len(args):
        if args[i] in ("--cfg", "-c") and i + 1 < len(args) and args[i + 1] == "job":
            i += 2
            continue
        if args[i] not in (PROVENANCE, "--cfg=job"):
            rest.append(args[i])
        i += 1
    flags = [a for a in rest if a.startswith("-")]
    if flags:
        print(f"error: {PROVENANCE} prints the job's config for overrides only (key=value, group=option); "
              f"got {' '.join(flags)}", file=sys.stderr)
        return EXIT_INVALID
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=rest)
            where = provenance.sources(cfg, rest)
    except Exception as err:  # a typo'd group or key: Hydra's own message
        print(f"error: {short(str(err))}", file=sys.stderr)
        return EXIT_INVALID
    print(provenance.annotate(cfg, where), end="")
    return 0


def resume(run_dir: Path, overrides: list[str]) -> None:
    """``python -m src.train resume=RUN_DIR [key=value ...]``: the run in RUN_DIR, continued with
    its recorded config (module docstring); Hydra's own files there are kept."""
    recorded = run_dir / ".hydra" / "config.yaml"
    try:
        if not recorded.is_file():
            raise ValueError(f"{RESUME_KEY}={run_dir}: no run there ({recorded} is missing); give the "
                             "folder a run printed when it started")
        cfg = OmegaConf.load(recorded)
        for text in overrides:
            key, sep, value = text.partition("=")
            if not sep or key.startswith(("hydra", "+", "~", "-")) or key == RESUME_KEY:
                raise ValueError(f"{RESUME_KEY}= takes key=value changes of the recorded config "
                                 f"(e.g. trainer.max_steps=2000), not {text!r}")
            node = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_resolution_failure=False)
            if node is _ABSENT or isinstance(node, DictConfig):
                raise ValueError(f"{key} is not a value of the recorded config of {run_dir}; {RESUME_KEY}= "
                                 "changes values (e.g. trainer.max_steps=2000): another group is another run")
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([text]))
    except ValueError as err:
        print(f"error: {short(str(err))}", file=sys.stderr, flush=True)
        sys.exit(EXIT_INVALID)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, handlers=[
        logging.StreamHandler(sys.stdout), logging.FileHandler(run_dir / HYDRA_LOG, delay=True)])
    run_and_report(cfg, run_dir, None, multirun=False)


def cli() -> None:
    args = sys.argv[1:]
    if PROVENANCE in args:
        sys.exit(print_provenance(args))
    resumed = [a for a in args if a.startswith(f"{RESUME_KEY}=")]
    if not resumed:
        from src.hooks import check_override_keys

        check_override_keys(args)  # typo'd keys, with the nearest ones, before Hydra composes
        main()
        return
    if len(resumed) > 1 or any(a.startswith("-") for a in args):
        print(f"error: {RESUME_KEY}=RUN_DIR is given once, without Hydra flags (-m, --cfg, ...)",
              file=sys.stderr, flush=True)
        sys.exit(EXIT_INVALID)
    resume(Path(resumed[0].split("=", 1)[1]), [a for a in args if a not in resumed])


if __name__ == "__main__":
    cli()
