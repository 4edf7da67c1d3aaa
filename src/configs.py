"""Where the configs live, and what each config group offers.

The ``conf/`` folders are the registry (no list of names anywhere else): a new estimator is
``src/guidance/<name>.py`` plus ``conf/guidance/<name>.yaml``, and every test, benchmark,
table and sweep that asks ``options("guidance")`` picks it up.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Iterable
from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
GLOBAL_PACKAGE = "# @package _global_"
# A suggestion is offered when it is this similar to the typo (difflib's ratio: "trainer.steps"
# and "trainer.max_steps" score 0.87, "guidance.lamda" and "guidance.lam" 0.92)
SUGGESTION_CUTOFF = 0.6
MAX_SUGGESTIONS = 3


def options(group: str) -> list[str]:
    """The choices of a config group, sorted: ``options("guidance")`` -> ['csd', 'dsd', ...]."""
    folder = CONF_DIR / group
    if not folder.is_dir():
        raise ValueError(f"no config group {group!r} under {CONF_DIR}")
    return sorted(p.stem for p in folder.glob("*.yaml"))


def guidance_names() -> list[str]:
    """Every estimator: the files of conf/guidance/."""
    return options("guidance")


def _flatten(node, prefix: str) -> Iterable[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "defaults" and not prefix:
                continue
            yield f"{prefix}{k}"
            yield from _flatten(v, f"{prefix}{k}.")


@functools.cache
def known_keys() -> frozenset[str]:
    """Every dotted key some composition of conf/ may have: conf/config.yaml's and those of every
    option of every group (``guidance.lam`` is known though only some methods have it). A key
    outside this set is refused by Hydra whatever the groups (its configs are structs)."""
    import yaml

    keys = set(_flatten(yaml.safe_load((CONF_DIR / "config.yaml").read_text()), ""))
    keys.discard("hydra")
    keys = {k for k in keys if not k.startswith("hydra.")}
    for path in sorted(CONF_DIR.rglob("*.yaml")):
        rel = path.relative_to(CONF_DIR)
        if rel.parts[0] == "hydra" or len(rel.parts) < 2:
            continue
        text = path.read_text()
        node = yaml.safe_load(text) or {}
        node = {k: v for k, v in node.items() if k != "defaults"} if isinstance(node, dict) else {}
        header = [line.strip() for line in text.splitlines()[:5]]
        prefix = "" if GLOBAL_PACKAGE in header else f"{rel.parts[0]}."
        keys.add(rel.parts[0])  # the group itself (a choice: guidance=vsd, tuning=...)
        keys |= set(_flatten(node, prefix))
    return frozenset(keys)


def did_you_mean(key: str, candidates: Iterable[str]) -> str:
    """' did you mean a or b?' for the candidates nearest to ``key``; '' when none is near."""
    near = difflib.get_close_matches(key, list(candidates), n=MAX_SUGGESTIONS, cutoff=SUGGESTION_CUTOFF)
    return f"; did you mean {' or '.join(near)}?" if near else ""


def unknown_key(key: str) -> str | None:
    """The refusal of an override of ``key`` when no config has it (with the nearest keys),
    else None. Group choices (``guidance``), Hydra's own keys and additions (``+key``: new by
    intent; validate checks them against what the part takes) pass."""
    if key.startswith("+"):
        return None
    key = key.lstrip("~")
    if key in known_keys() or key.split(".")[0] == "hydra" or "/" in key or "@" in key:
        return None
    return f"{key} is not a key of this project's configs{did_you_mean(key, known_keys())}"


def unknown_option(group: str, value) -> str | None:
    """The refusal of ``group=value`` when conf/<group>/ has no such option (with the nearest
    ones), else None; only for the top-level groups and plain names."""
    if ("/" in group or not (CONF_DIR / group).is_dir() or not isinstance(value, str) or value == "null"
            or "${" in value):  # an interpolation: Hydra resolves it
        return None
    known = options(group)
    if value in known:
        return None
    near = difflib.get_close_matches(value, known, n=MAX_SUGGESTIONS, cutoff=SUGGESTION_CUTOFF)
    hint = f"did you mean {' or '.join(f'{group}={n}' for n in near)}? " if near else ""
    return f"{group}={value} is not an option of {group}: {hint}options: {', '.join(known)}"

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
