"""Where each value of a run's config came from: the yaml file that set it, or the command line.

Hydra composes a run from an ordered defaults list (conf/config.yaml, each group's file, the
files those choose, the tuning files, the experiment preset) and then applies the command
line's key overrides; it does not record which of them set a key. ``sources`` replays that
order: Hydra's own defaults list for the overrides (``ConfigLoader.compute_defaults_list``, the
list ``--info defaults`` prints), each file as Hydra reads it (its config repository) with its
keys at the package Hydra puts them, later files over earlier ones, the command line last. A leaf gets the last of them that set it or a node
above it (a file's ``key: null`` replaced by a dict below is the later file's).

A run writes the result to ``<run_dir>/.hydra/provenance.yaml`` (src/train.py), and
``python -m src.train --cfg job --provenance [overrides]`` prints the composed config with each
value's source beside it (``annotate``).
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from src.configs import CONF_DIR

COMMAND_LINE = "command line"
ROOT = CONF_DIR.parent  # sources are named relative to the project
# Keys of the composed config that are Hydra's own, not the run's.
_HYDRA = "hydra"


def _leaves(node, prefix: str = "") -> dict[str, object]:
    """{dotted path: value} of every leaf; lists and empty dicts are leaves."""
    if isinstance(node, dict) and node:
        out = {}
        for k, v in node.items():
            out.update(_leaves(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): node}


def _layers(overrides: list[str], config_name: str) -> list[tuple[str, dict]]:
    """(source, {path: value} it sets) in Hydra's order of composition."""
    loader = GlobalHydra.instance().config_loader()
    defaults = loader.compute_defaults_list(config_name, list(overrides), RunMode.RUN)
    layers = []
    for d in defaults.defaults:
        if d.config_path is None or (d.package or "").split(".")[0] == _HYDRA:
            continue
        loaded = loader.repository.load_config(d.config_path)  # Hydra's own read: no defaults list
        content = OmegaConf.to_container(loaded.config, resolve=False) or {}
        if not d.package:
            content.pop(_HYDRA, None)
        sets = _leaves(content, f"{d.package}." if d.package else "")
        layers.append((_where(loaded.path, d.config_path), sets))
    for o in defaults.config_overrides:
        if o.is_delete():
            layers.append((None, {o.key_or_group: None}))
        elif o.key_or_group.split(".")[0] != _HYDRA:
            layers.append((COMMAND_LINE, {o.key_or_group: None}))
    return layers


def _where(source_root: str, config_path: str) -> str:
    """The file's path relative to the project (conf/tuning/shapes.yaml) when it lies in it."""
    if not source_root.startswith("file://"):
        return f"{source_root}/{config_path}.yaml"  # e.g. a pkg:// search path
    path = Path(source_root[len("file://"):]) / f"{config_path}.yaml"
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


def sources(cfg: DictConfig, overrides: list[str] | tuple[str, ...] = (), config_name: str = "config") -> dict[str, str]:
    """{dotted key: 'conf/<file>.yaml' or 'command line'} for every leaf of ``cfg``, the config
    composed from ``overrides`` (inside a Hydra job or not)."""
    if GlobalHydra.instance().is_initialized():
        layers = _layers(list(overrides), config_name)
    else:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            layers = _layers(list(overrides), config_name)
    # the latest layer that set each path (a deleted path: no source)
    latest: dict[str, tuple[int, str | None]] = {}
    for i, (source, sets) in enumerate(layers):
        for path in sets:
            latest[path] = (i, source)
    out = {}
    leaves = _leaves(OmegaConf.to_container(cfg, resolve=False))
    for leaf in leaves:
        if leaf.split(".")[0] == _HYDRA:
            continue
        parts = leaf.split(".")
        candidates = [latest[p] for p in (".".join(parts[:n]) for n in range(len(parts), 0, -1)) if p in latest]
        if candidates:
            source = max(candidates)[1]
            if source is not None:
                out[leaf] = source
    return out


_KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[^\s:#'\"-][^:]*|'[^']*'):(?: |$)")


def annotate(cfg: DictConfig, where: dict[str, str]) -> str:
    """The config as YAML (``--cfg job``'s text), each leaf's line ending in ``# <source>``."""
    lines, stack = [], []  # stack: (indent, key) of the mappings the line is inside
    for line in OmegaConf.to_yaml(cfg).splitlines():
        m = _KEY_LINE.match(line)
        if m:
            indent = len(m["indent"])
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, m["key"].strip("'")))
            source = where.get(".".join(k for _, k in stack))
            if source is not None:
                line = f"{line}  # {source}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def to_yaml(where: dict[str, str]) -> str:
    """``.hydra/provenance.yaml``: one ``key: source`` line per leaf, in the config's order."""
    return yaml.safe_dump(where, sort_keys=False, width=1000)
