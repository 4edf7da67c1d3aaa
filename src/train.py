"""Entry point: ``python -m src.train [group=option ...] [key=value ...]`` (Hydra).

Examples::

    python -m src.train                                   # the default job
    python -m src.train backbone=mog2d representation=particles guidance=esd
    python -m src.train experiment=esd_toy guidance=esd guidance.lam=1 hydra.run.dir=out/esd
    python -m src.train --cfg job                         # print the composed config
    python -m src.train --cfg job --provenance guidance=sim   # ... with each value's source file

Invalid configs fail before any compute with a message naming the key and what is allowed.
Exit codes: 0 finished, 2 invalid config or unusable run dir (or missing weights), 3 diverged,
128 + N stopped by signal N (after writing a checkpoint), 1 anything else.

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

from src import provenance
from src.configs import CONF_DIR

log = logging.getLogger("src.train")

EXIT_INVALID, EXIT_DIVERGED = 2, 3
# Hydra's job log; a run dir holding nothing else was created by this failed run alone.
HYDRA_LOG = "train.log"
# An error message longer than this is cut (a 10k-character value must not make a 10 kB error).
MAX_ERROR_CHARS = 2000


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


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from src.trainer import Diverged, Interrupted, run

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        try:
            metrics, _ = run(cfg, run_dir, hydra_files(hc, cfg))
        except InstantiationException as wrapped:  # report the builder's own error, not Hydra's
            raise (wrapped.__cause__ or wrapped) from None
    except (ValueError, OSError) as err:  # config, run dir, prompt, missing weights, full disk
        fail(run_dir, err, EXIT_INVALID, multirun)
    except Diverged as err:
        fail(run_dir, err, EXIT_DIVERGED, multirun)
    except Interrupted as err:
        fail(run_dir, err, err.exit_code, multirun)
    numbers = {k: round(v, 4) for k, v in metrics.items() if isinstance(v, (int, float))}
    log.info("metrics: %s", numbers)
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


if __name__ == "__main__":
    if PROVENANCE in sys.argv[1:]:
        sys.exit(print_provenance(sys.argv[1:]))
    from src.hooks import check_override_keys

    check_override_keys(sys.argv[1:])  # typo'd keys, with the nearest ones, before Hydra composes
    main()
