"""What a sweep holds fixed, and what its prior says the answer should be: the report's header.

- ``fixed_settings``: the overrides every run shares (sweep.yaml's ``overrides``, else the keys
  whose value is the same in every run's ``.hydra/overrides.yaml``), then from the runs'
  composed configs the values a reader asks first (``SHOWN``: prompt, steps, ...), where every
  run has the same one.
- ``ClassWorld``: a backbone whose classes have names (``class_name(id)``, and
  ``class_distribution(prompt)`` for the truth: ShapesWorld) names a run's ``mode_id``
  ("yellow cone" for 15 in the default world) and gives the prompt's true class distribution,
  which the mode histogram shows beside the runs'. It is built from a run's own config; its
  constructor renders nothing (the data set is rendered on first use, never here).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from src.metrics.modes import NO_MODE
from src.studies.runs import Run, machine_of, run_config
from src.sweeps import SEED_KEY, SPEC_RECORD

log = logging.getLogger(__name__)

# (label, config key): the composed values shown in the header when every run has the same one.
SHOWN = (("prompt", "prompt"), ("steps", "trainer.max_steps"), ("backbone", "backbone._target_"),
         ("representation", "representation._target_"), ("eval views", "camera.n_eval_views"))
# A class the truth gives less weight than this is not one of the prompt's modes.
TRUTH_MIN_WEIGHT = 1e-12


def _select(cfg, key: str):
    try:
        value = OmegaConf.select(cfg, key, throw_on_missing=False)
    except Exception:  # an interpolation that no longer resolves: not worth a header line
        return None
    return value.rsplit(".", 1)[-1] if key.endswith("._target_") and isinstance(value, str) else value


def fixed_settings(runs: list[Run], sweep_dir: Path, swept: list[str]) -> list[tuple[str, str]]:
    """(label, value) of what every run shares: the sweep's fixed overrides, then ``SHOWN``."""
    record = Path(sweep_dir) / SPEC_RECORD
    spec = (yaml.safe_load(record.read_text()) or {}) if record.exists() else {}
    if spec.get("overrides"):
        fixed = {str(k): str(v) for k, v in spec["overrides"].items()}
    else:
        keys = set.intersection(*(set(r.overrides) for r in runs)) if runs else set()
        fixed = {k: runs[0].overrides[k] for k in sorted(keys)
                 if k not in swept and k != SEED_KEY and len({r.overrides[k] for r in runs}) == 1}
    out = [(k, v) for k, v in fixed.items()]
    configs = [c for c in (run_config(r.dir) for r in runs) if c is not None]
    for label, key in SHOWN:
        if key in fixed or key.split(".", 1)[0] in swept or key in swept:
            continue
        values = {str(_select(c, key)) for c in configs}
        if len(values) == 1 and values != {"None"}:
            out.append((label, values.pop()))
    machines = {machine_of(r.dir).get("device") for r in runs if r.finished}
    if len(machines) == 1 and None not in machines:
        out.append(("machine", machines.pop()))
    seeds = sorted({r.seed for r in runs if r.seed}, key=lambda s: (len(s), s))
    if seeds:
        out.append(("seeds", " ".join(seeds)))
    return out


@dataclass
class ClassWorld:
    """Class names of a backbone and the true class distribution of the runs' prompt."""

    names: dict[int, str]  # class id -> name (NO_MODE -> "none")
    prompt: str
    truth: dict[int, float]  # class id -> p(class | prompt), the prompt's classes only

    def name(self, class_id: float | int | None) -> str:
        if class_id is None or (isinstance(class_id, float) and math.isnan(class_id)):
            return "nan"
        return self.names.get(int(class_id), str(int(class_id)))

    @property
    def truth_entropy(self) -> float:
        """Entropy in bits of the true class distribution (e.g. 2 for four equal modes)."""
        return max(0.0, -sum(p * math.log2(p) for p in self.truth.values() if p > 0))


def class_world(runs: list[Run]) -> ClassWorld | None:
    """The ClassWorld of the runs' backbone and prompt, or None when the backbone names no
    classes, the runs differ in backbone or prompt, or they have no composed config. A config
    that no longer builds (a run of an older revision) leaves the ids as they are, with a
    warning: the names are a help to the reader, never a reason to lose the report."""
    try:
        return _class_world(runs)
    except Exception as err:  # noqa: BLE001 - any failure to build the world: ids, not names
        log.warning("class names left out of the report: the runs' backbone does not build here (%s)", err)
        return None


def _class_world(runs: list[Run]) -> ClassWorld | None:
    from hydra.utils import instantiate

    from src.build import component_class

    configs = [c for c in (run_config(r.dir) for r in runs) if c is not None]
    if not configs:
        return None
    spec = {(yaml.safe_dump(OmegaConf.to_container(c.backbone, resolve=True)), str(c.prompt)) for c in configs
            if c.get("backbone") is not None}
    if len(spec) != 1:
        return None
    cfg = configs[0]
    cls = component_class(cfg, "backbone")
    if cls is None or not (hasattr(cls, "class_name") and hasattr(cls, "class_distribution")):
        return None  # e.g. Stable Diffusion: no classes (and never built here: its weights are GBs)
    world = instantiate(cfg.backbone)
    prompt = str(cfg.prompt)
    p = world.class_distribution(prompt)
    names = {i: world.class_name(i) for i in range(len(p))}
    names[NO_MODE] = world.class_name(NO_MODE)
    return ClassWorld(names, prompt, {i: float(v) for i, v in enumerate(p.tolist()) if v > TRUTH_MIN_WEIGHT})
