"""From a composed config to the run's parts, and back from a checkpoint (trainer and export).

- ``validate(cfg)``: every check, before anything is built or written. Each component class
  checks its own keys (``validate_config``, src/checks.py); this module checks the trainer's
  keys and how the groups fit together, and names the key and what is allowed.
- ``build_components(cfg, device)``: ``_target_`` instantiation of every group, in the order
  of DESIGN.md's data flow.
- ``CHECKPOINT`` / ``save_checkpoint`` / ``load_checkpoint``: where a run's state lives.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from src import checks, rng
from src.checks import RUN_LENGTH, ConfigError
from src.clock import Clock
from src.configs import CONF_DIR, did_you_mean, options
from src.fileio import atomic_write
from src.loggers import WandbLogger

CHECKPOINT = Path("checkpoints") / "last.pt"
DTYPES = {"float32": torch.float32, "float64": torch.float64}
OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}
# Groups built by _target_, in build order; score_model only for methods with psi, reward only
# when one is chosen.
GROUPS = ("backbone", "representation", "camera", "schedule", "reward", "score_model", "guidance")
DEVICES = "auto, cpu, cuda, cuda:N"
_CUDA = re.compile(r"cuda(?::(\d+))?")
# Keys of conf/config.yaml that are Hydra's, not the run's.
_NOT_RUN_KEYS = ("defaults", "hydra")

__all__ = ["CHECKPOINT", "Components", "ConfigError", "build_components", "load_checkpoint",
           "save_checkpoint", "validate"]


# --- validation ---------------------------------------------------------------------------
def component_class(cfg: DictConfig, group: str) -> type | None:
    target = cfg[group].get("_target_") if cfg.get(group) is not None else None
    if target is None:
        return None
    try:
        return get_class(str(target))
    except Exception as err:  # a typo'd _target_ or a module that fails to import
        raise ConfigError(f"{group}._target_={target!r} cannot be imported: {err}") from None


def _known_keys() -> tuple[set[str], set[str]]:
    """(top-level keys, trainer keys) a run may have: conf/config.yaml's plus the groups."""
    base = OmegaConf.load(CONF_DIR / "config.yaml")
    groups = {p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name not in _NOT_RUN_KEYS}
    return set(base) - set(_NOT_RUN_KEYS) | groups, set(base.trainer)


def _unknown(given, known: set[str], prefix: str) -> None:
    unknown = sorted(str(k) for k in given if k not in known)
    if unknown:
        near = did_you_mean(prefix + unknown[0], [prefix + k for k in known])
        raise ConfigError(f"{', '.join(prefix + k for k in unknown)}: unknown key(s){near}; "
                          f"known: {', '.join(prefix + k for k in sorted(known))}")


def check_device(value, key: str = "device") -> torch.device:
    """``value`` (auto, cpu, cuda, cuda:N) as the device it names on this machine (auto: the
    first GPU if there is one, else the CPU), or a ConfigError naming ``key`` and what is allowed."""
    if value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if value == "cpu":
        return torch.device("cpu")
    match = _CUDA.fullmatch(str(value))
    checks.require(match is not None, key, value, f"allowed: {DEVICES}")
    if not torch.cuda.is_available():
        raise checks.fail(key, value, "no CUDA GPU is visible here "
                          f"(torch.cuda.is_available() is False); use {key}=cpu or {key}=auto")
    index, count = int(match.group(1) or 0), torch.cuda.device_count()
    checks.require(index < count, key, value, f"this machine has cuda:0 to cuda:{count - 1}")
    return torch.device("cuda", index)


def validate_device(cfg: DictConfig) -> None:
    """device is auto, cpu, or a CUDA device this machine has."""
    check_device(cfg.get("device"), "device")


def validate_logger(cfg: DictConfig) -> None:
    lg = cfg.get("logger") or {}
    _unknown(lg, {"wandb", "timestamps"}, "logger.")
    if "timestamps" in lg:
        checks.choice(lg, "timestamps", "logger.timestamps", (True, False))
    wandb = lg.get("wandb")
    if wandb is not None:
        names, _ = checks.accepted_arguments(WandbLogger)
        _unknown(wandb, names - {"run_dir", "config"}, "logger.wandb.")
        checks.choice(wandb, "mode", "logger.wandb.mode", WandbLogger.MODES)
        for name in ("project", "entity", "group", "name"):
            value = wandb.get(name)
            checks.require(value is None or isinstance(value, str), f"logger.wandb.{name}", value, "a text or null")
        tags = wandb.get("tags")
        checks.require(tags is None or (OmegaConf.is_list(tags) or isinstance(tags, list))
                       and all(isinstance(t, str) for t in tags), "logger.wandb.tags", tags, "a list of texts")


def validate_trainer(cfg: DictConfig) -> None:
    """The run's own keys: trainer.*, seed, device, threads, logger, no unknown keys."""
    top, trainer_keys = _known_keys()
    _unknown(cfg, top, "")
    _unknown(cfg.trainer, trainer_keys, "trainer.")
    tr = cfg.trainer
    checks.number(cfg, "seed", "seed", integer=True)
    checks.number(cfg, "num_threads", "num_threads", lo=1, integer=True, optional=True)
    validate_device(cfg)
    validate_logger(cfg)
    for name in ("progress", "export", "deterministic"):
        checks.require(isinstance(tr.get(name), bool), f"trainer.{name}", tr.get(name), "true or false")
    checks.number(tr, "max_steps", "trainer.max_steps", lo=1, integer=True)
    for name in ("checkpoint_every", "log_every"):
        checks.number(tr, name, f"trainer.{name}", lo=1, integer=True)
    checks.number(tr, "warmup_steps", "trainer.warmup_steps", lo=0, integer=True)
    if tr.get("val_every") != "auto":
        checks.number(tr, "val_every", "trainer.val_every", lo=0, integer=True)
    checks.number(tr, "grad_clip", "trainer.grad_clip", lo=0.0, lo_open=True, optional=True)
    checks.number(tr, "step_sleep", "trainer.step_sleep", lo=0.0)
    checks.choice(tr, "dtype", "trainer.dtype", DTYPES)
    checks.choice(tr, "optimizer", "trainer.optimizer", OPTIMIZERS)


def representations_for(kinds: tuple[str, ...]) -> list[str]:
    """The representation options (conf/representation/) whose kind is in ``kinds``."""
    names = []
    for name in options("representation"):
        target = OmegaConf.load(CONF_DIR / "representation" / f"{name}.yaml").get("_target_")
        if target and get_class(target).kind in kinds:
            names.append(name)
    return names


def validate(cfg: DictConfig) -> None:
    """Cheap checks of the composed config, before anything is built or written."""
    validate_trainer(cfg)
    classes = {group: component_class(cfg, group) for group in GROUPS}
    for group in ("backbone", "representation", "camera", "schedule", "guidance"):
        if classes[group] is None:
            raise ConfigError(f"{group} has no _target_: choose one of {', '.join(options(group))}")
    if not classes["guidance"].uses_score_model:
        classes["score_model"] = None
    for group, cls in classes.items():
        if cls is not None:
            cls.validate_config(cfg[group], group)
    for group, cls in classes.items():
        if cls is not None:
            cls.check_composition(cfg[group], group, cfg)
    for name in ("prompt", "negative_prompt"):
        value = cfg.get(name)
        checks.require(value is None or isinstance(value, (str, int, float)), name, value, "a text")
    classes["backbone"].check_prompt(cfg.backbone, str(cfg.prompt or ""))
    rep, bb = classes["representation"], classes["backbone"]
    if rep.kind not in bb.supported_representations:
        raise ConfigError(
            f"representation={rep.__name__} is a {rep.kind!r} representation, which backbone "
            f"{bb.__name__} cannot drive; it drives {', '.join(representations_for(bb.supported_representations))}"
        )
    if cfg.trainer.export and rep.kind == "3d":  # the turntable's .mp4, written after training
        from src.export.video import video_writer_problem

        problem = video_writer_problem()
        if problem:
            raise ConfigError(f"trainer.export=true is invalid: the turntable video needs imageio-ffmpeg, "
                              f"which is not usable here ({problem}); pip install imageio-ffmpeg (a "
                              "dependency of this project), or trainer.export=false")


# --- building -------------------------------------------------------------------------------
@dataclass
class Components:
    backbone: object
    representation: object
    cameras: object
    schedule: object
    guidance: object
    reward: object | None
    clock: Clock  # the run's length, and which parts read it (src/clock.py)


def build_components(cfg: DictConfig, device: torch.device | str = "cpu") -> Components:
    """Instantiate every part from the composed config (trainer and src.reexport). A part whose
    constructor names ``run_length`` gets its handle on the run's clock (src/clock.py)."""
    rng.seed_global(int(cfg.seed), rng.Stream.INIT)  # parameter inits (representation, psi)
    dtype = DTYPES[cfg.trainer.dtype]
    clock = Clock(int(cfg.trainer.max_steps))

    def build(group: str, **injected):
        cls = get_class(str(cfg[group]._target_))
        if RUN_LENGTH in checks.accepted_arguments(cls)[0]:
            injected[RUN_LENGTH] = clock.run_length(group, cls.__name__)
        return instantiate(cfg[group], **injected)

    backbone = build("backbone").to(device)
    backbone.requires_grad_(False)
    prompt = str(cfg.prompt or "")
    backbone.validate_prompt(prompt)
    representation = build("representation", backbone=backbone).to(device=device, dtype=dtype)
    cameras = build("camera")
    schedule = build("schedule", num_timesteps=backbone.num_timesteps)
    reward = build("reward", backbone=backbone) if cfg.reward.get("_target_") else None
    uses_psi = get_class(cfg.guidance._target_).uses_score_model
    score_model = build("score_model") if uses_psi else None
    guidance = build("guidance", backbone=backbone, schedule=schedule, prompt=prompt,
                     negative_prompt=str(cfg.negative_prompt or ""), seed=int(cfg.seed),
                     representation=representation, reward=reward, score_model=score_model,
                     _convert_="all")
    guidance.to(device=device)
    if uses_psi and guidance.psi.trainable_parameters():
        guidance.psi.to(dtype=dtype)
    return Components(backbone, representation, cameras, schedule, guidance, reward, clock)


# --- checkpoints ----------------------------------------------------------------------------
def save_checkpoint(path: Path, state: dict) -> None:
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(run_dir: Path, device: torch.device | str = "cpu") -> dict:
    return torch.load(Path(run_dir) / CHECKPOINT, map_location=device, weights_only=False)
