"""Python API over the same configs the CLI uses (tests, scripts, notebooks).

    from src.api import compose, train
    cfg = compose(["experiment=esd_toy", "guidance=esd", "guidance.lam=1"])
    metrics, trainer = train(cfg, "runs/esd")
"""

from __future__ import annotations

from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import DictConfig, open_dict

from src.configs import CONF_DIR


def compose(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The composed config of ``python -m src.train <overrides>``."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=list(overrides))
    with open_dict(cfg):
        cfg.trainer.progress = False
        cfg.pop("hydra", None)
    return cfg


def train(cfg: DictConfig, run_dir: str | Path):
    """Validate, own the run dir, build and run (src.trainer.run); returns (metrics, trainer)."""
    from src.trainer import run

    return run(cfg, Path(run_dir))
