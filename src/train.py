"""Entry point: ``python -m src.train [group=option ...] [key=value ...]`` (Hydra).

Examples::

    python -m src.train                                   # the default job
    python -m src.train backbone=mog2d representation=particles guidance=esd
    python -m src.train experiment=esd_toy guidance=esd guidance.lam=1 hydra.run.dir=out/esd
    python -m src.train --cfg job                         # print the composed config

Invalid configs fail before any compute with a message naming the key and what is allowed.
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from src.configs import CONF_DIR

log = logging.getLogger("src.train")


def _discard_empty_run_dir(run_dir: Path) -> None:
    """A run that failed validation leaves nothing behind (only Hydra's own files were written)."""
    if (run_dir / "checkpoints").exists() or (run_dir / "metrics.json").exists():
        return
    if all(p.name in {".hydra", "train.log"} for p in run_dir.iterdir()):
        shutil.rmtree(run_dir, ignore_errors=True)


def run(cfg: DictConfig, run_dir: Path) -> dict:
    from src.trainer import Trainer, validate

    validate(cfg)
    return Trainer(cfg, run_dir).fit()


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        try:
            metrics = run(cfg, run_dir)
        except InstantiationException as wrapped:  # report the builder's own error, not Hydra's
            raise (wrapped.__cause__ or wrapped) from None
    except (ValueError, FileNotFoundError, OSError) as err:  # config, prompt, missing weights
        _discard_empty_run_dir(run_dir)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    log.info("metrics: %s", {k: round(v, 4) for k, v in metrics.items()})
    return metrics.get("precision", metrics.get("mode_coverage"))


if __name__ == "__main__":
    main()
