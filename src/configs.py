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


# --- the world a learned prior was trained on -------------------------------------------------
# A diffusers model trained on an analytic world (scripts/train_prior.py) carries that world's
# backbone config beside its weights; conf/backbone/diffusers.yaml reads it into backbone.world,
# where the camera and representation groups find the world's resolution, cameras and
# background as they find ShapesWorld's own keys, and StableDiffusion.evaluate its exact metrics.
WORLD_FILE = "world.yaml"


def model_world(path):
    """<path>/world.yaml of a local model directory (a DictConfig); {} for a Hub id or no file."""
    from omegaconf import OmegaConf

    file = Path(str(path)).expanduser() / WORLD_FILE
    if not file.is_file():
        return {}
    return OmegaConf.load(file)


def _register_resolvers() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("model_world"):
        OmegaConf.register_new_resolver("model_world", model_world)


_register_resolvers()
