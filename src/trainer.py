"""The single trainer (DESIGN.md "Data flow of one step").

    views = cameras.sample(step)          out = representation.render(views)
    x     = out.x or backbone.encode(out.rgb)     g = guidance(x, views, step)
    loss  = 0.5 ||x - sg(x - G)||^2 + reg(out)   (sum over pixels, mean over batch: dL/dx = G)
    loss.backward(); optimizer.step();    guidance.update(x.detach(), views, step)

It knows no method, representation or backbone: it moves tensors between the interfaces
and owns the loop, seeding, checkpoints (atomic, automatic resume), logging, final
metrics and export. All randomness is drawn from generators of (seed, stream, step)
(src/rng.py), so a run killed at step k and resumed ends bit-identical to an uninterrupted
one (on the CPU). Validation and building live one floor down, in src/build.py.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from src import rng
from src.build import (
    CHECKPOINT,
    DTYPES,
    OPTIMIZERS,
    ConfigError,
    build_components,
    load_checkpoint,
    save_checkpoint,
    validate,
)
from src.loggers import JSONLLogger, Loggers, WandbLogger
from src.runinfo import run_info, write_json_atomic

log = logging.getLogger(__name__)

# Config keys that do not change a run's result; every other key defines the run, and a run
# dir holding a checkpoint of another run is refused rather than silently mixed.
NON_IDENTITY_KEYS = ("device", "num_threads", "logger", "trainer.progress", "trainer.log_every",
                     "trainer.checkpoint_every", "trainer.step_sleep", "trainer.export",
                     "trainer.val_every", "representation.export")
# trainer.val_every=auto: a validation grid every 10% of the steps for 3D representations.
VAL_FRACTION = 0.1

__all__ = ["ConfigError", "Trainer", "identity", "resolve_device", "validate"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def identity(cfg: DictConfig) -> dict:
    ident = OmegaConf.to_container(cfg, resolve=True)
    for key in NON_IDENTITY_KEYS:
        *parents, leaf = key.split(".")
        node = ident
        for p in parents:
            node = node.get(p, {})
        node.pop(leaf, None)
    return ident


def validation_every(cfg: DictConfig, kind: str) -> int:
    """Steps between validation grids: ``trainer.val_every``, or for ``auto`` VAL_FRACTION of
    the run for 3D representations (off for the others); 0 = off."""
    every = cfg.trainer.get("val_every", 0)
    if every == "auto":
        return max(1, round(VAL_FRACTION * int(cfg.trainer.max_steps))) if kind == "3d" else 0
    return int(every or 0)


# --- the loop -------------------------------------------------------------------------------
class Trainer:
    def __init__(self, cfg: DictConfig, run_dir: Path):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.device = resolve_device(str(cfg.device))
        if cfg.get("num_threads"):
            torch.set_num_threads(int(cfg.num_threads))
        self.c = build_components(cfg, self.device)
        rep = self.c.representation
        self.optimizer = OPTIMIZERS[str(cfg.trainer.optimizer)](rep.param_groups())
        warm = int(cfg.trainer.warmup_steps)
        self.lr_schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warm) if warm > 0 else 1.0)
        self.step = 0

    # state --------------------------------------------------------------------------------
    def state(self) -> dict:
        return {"step": self.step, "representation": self.c.representation.state_dict(),
                "optimizer": self.optimizer.state_dict(), "lr_schedule": self.lr_schedule.state_dict(),
                "guidance": self.c.guidance.state_dict(), "identity": identity(self.cfg)}

    def load(self, state: dict) -> None:
        if state.get("identity") != identity(self.cfg):
            raise ConfigError(
                f"{self.run_dir} holds a checkpoint of a different run (its config differs); "
                "use a fresh hydra.run.dir or delete that directory")
        self.c.representation.load_state_dict(state["representation"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_schedule.load_state_dict(state["lr_schedule"])
        self.c.guidance.load_state_dict(state["guidance"])
        self.step = int(state["step"])

    def save(self) -> None:
        save_checkpoint(self.run_dir / CHECKPOINT, self.state())

    # one step -----------------------------------------------------------------------------
    def train_step(self, step: int) -> dict[str, float]:
        c, dtype, seed = self.c, DTYPES[self.cfg.trainer.dtype], int(self.cfg.seed)
        # anything that draws from the global RNG (e.g. stratified ray samples) is step-seeded
        rng.seed_global(seed, rng.Stream.GLOBAL, step)
        c.representation.update_step(step, int(self.cfg.trainer.max_steps))
        views = c.cameras.sample(step, rng.generator(seed, rng.Stream.CAMERA, step)).to(self.device)
        out = c.representation.render(views)
        x = out.x if out.x is not None else c.backbone.encode(out.rgb)
        g = c.guidance(x, views, step, out=out)
        target = (x - g.grad.to(x.dtype)).detach()
        loss_sd = 0.5 * ((x - target) ** 2).flatten(1).sum(1).mean()
        regs = c.representation.regularizers(out, step)
        loss = loss_sd + sum(regs.values(), torch.zeros((), device=loss_sd.device, dtype=loss_sd.dtype))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.trainer.grad_clip:
            torch.nn.utils.clip_grad_norm_(c.representation.parameters(), float(self.cfg.trainer.grad_clip))
        self.optimizer.step()
        self.lr_schedule.step()
        logs = c.guidance.update(x.detach().to(dtype), views, step)
        return {"loss": float(loss.detach()), "grad_norm": float(g.grad.flatten(1).norm(dim=1).mean()),
                "t": float(g.t.float().mean()), **{f"reg/{k}": float(v) for k, v in regs.items()},
                **g.logs, **logs}

    # the run ------------------------------------------------------------------------------
    def fit(self) -> dict[str, float]:
        cfg, max_steps = self.cfg, int(self.cfg.trainer.max_steps)
        ckpt = self.run_dir / CHECKPOINT
        metrics_path = self.run_dir / "metrics.json"
        if ckpt.exists():
            self.load(load_checkpoint(self.run_dir, self.device))
            if self.step >= max_steps and metrics_path.exists():
                log.info("run in %s already finished (step %d); nothing to do", self.run_dir, self.step)
                import json

                return json.loads(metrics_path.read_text())
            log.info("resuming %s from step %d", self.run_dir, self.step)
        write_json_atomic(self.run_dir / "run_info.json",
                          {**run_info(int(cfg.seed)), "resumed_from_step": self.step})
        loggers = self._loggers()
        sleep = float(cfg.trainer.get("step_sleep", 0) or 0)
        t0, start = time.time(), self.step
        bar = self._progress(max_steps)
        val_every = validation_every(cfg, self.c.representation.kind)
        logs: dict[str, float] = {}
        while self.step < max_steps:
            logs = self.train_step(self.step)
            self.step += 1
            if sleep:
                time.sleep(sleep)  # only for preemption tests (trainer.step_sleep)
            if self.step % int(cfg.trainer.log_every) == 0 or self.step == max_steps:
                loggers.log(logs, self.step)
            if self.step % int(cfg.trainer.checkpoint_every) == 0 or self.step == max_steps:
                self.save()
            # the last step's grid would show what the export's views.png shows
            if val_every and self.step % val_every == 0 and not (self.step == max_steps and cfg.trainer.export):
                path = self.validation_grid()
                if path is not None:
                    loggers.log_media("val/grid", path, self.step)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{logs['loss']:.4g}", t=int(logs["t"]))
        if bar is not None:
            bar.close()
        elapsed = time.time() - t0
        metrics = {**self.evaluate(), "final_loss": logs.get("loss", float("nan")),
                   "steps": float(self.step), "wall_time_s": elapsed,
                   "steps_per_s": (self.step - start) / elapsed if elapsed > 0 else float("nan")}
        if cfg.trainer.export:
            export_dir = self.run_dir / "export"
            export_dir.mkdir(exist_ok=True)
            for path in self.c.representation.export(export_dir, self.c.cameras.eval_views()):
                loggers.log_media(f"export/{Path(path).stem}", path, self.step)
        from src.export.plots import plot_curves

        plot_curves(self.run_dir / "metrics.jsonl", self.run_dir / "loss.png")
        write_json_atomic(metrics_path, metrics)
        loggers.log({f"final/{k}": v for k, v in metrics.items()}, self.step)
        loggers.finish(metrics)
        return metrics

    @torch.no_grad()
    def validation_grid(self) -> Path | None:
        """A PNG grid of the evaluation views (image / 3D representations) in <run_dir>/val/."""
        if self.c.representation.kind == "vector":
            return None
        from src.export.video import render_frames, write_grid

        frames = render_frames(self.c.representation, self.c.cameras.eval_views().to(self.device))
        out = self.run_dir / "val"
        out.mkdir(exist_ok=True)
        return write_grid(frames, out / f"step_{self.step:06d}.png")

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        views = self.c.cameras.eval_views().to(self.device)
        samples = self.c.representation.samples(views)
        return self.c.backbone.evaluate(samples, views, str(self.cfg.prompt or ""))

    def _loggers(self) -> Loggers:
        loggers = [JSONLLogger(self.run_dir, resume_step=self.step)]
        wcfg = self.cfg.logger.get("wandb")
        if wcfg is not None and wcfg.get("mode", "offline") != "disabled":
            loggers.append(WandbLogger(self.run_dir, OmegaConf.to_container(self.cfg, resolve=True),
                                       **OmegaConf.to_container(wcfg, resolve=True)))
        return Loggers(loggers)

    def _progress(self, max_steps: int):
        if not self.cfg.trainer.progress:
            return None
        from tqdm import tqdm

        return tqdm(total=max_steps, initial=self.step, desc=str(self.cfg.guidance._target_).split(".")[-1],
                    unit="step", dynamic_ncols=True)
