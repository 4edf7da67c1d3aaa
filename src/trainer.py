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

A run never lies (``run``): it owns its directory (src/rundir.py) before anything there
changes; a non-finite loss, gradient or parameter stops it at that step (``Diverged``) and no
such state is ever checkpointed; SIGTERM / SIGINT end the step, checkpoint and exit
(``Interrupted``); a run whose final metrics are missing recomputes them from its checkpoint.
``metrics.json`` is strict JSON with a ``status``: "finished" (plus the flat metrics),
"diverged" or "failed" (plus ``failed_step``, ``last_good_step`` and a one-line ``error``).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from src import rng, rundir
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
from src.fileio import atomic_write, stale_temp_files
from src.loggers import FINAL_PREFIX, JSONLLogger, Loggers, Progress, WandbLogger
from src.rundir import NON_IDENTITY_KEYS, RunDirError, identity
from src.runinfo import RUN_INFO, RunRecord, device_info, write_json_atomic

log = logging.getLogger(__name__)

METRICS = "metrics.json"
FINISHED, DIVERGED, FAILED = "finished", "diverged", "failed"  # metrics.json "status"
INTERRUPTED = "interrupted"  # an attempt's status in run_info.json (no metrics.json)
# Files a run's first attempt writes before its first step: removed again when that attempt
# fails before training (e.g. weights missing), so that it leaves no run dir behind.
CLAIM_FILES = (".hydra", RUN_INFO, rundir.LOCK_FILE, "metrics.jsonl")
# trainer.val_every=auto: a validation grid every 10% of the steps for 3D representations.
VAL_FRACTION = 0.1

__all__ = ["ConfigError", "DiskFull", "Diverged", "Interrupted", "NON_IDENTITY_KEYS", "Trainer", "identity",
           "read_metrics", "resolve_device", "run", "validate"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# cuBLAS is deterministic only with a fixed workspace (NVIDIA cuBLAS docs, "Results
# reproducibility"; torch.use_deterministic_algorithms asks for it); read at cuBLAS's first use.
CUBLAS_WORKSPACE = ":4096:8"


def set_determinism(on: bool) -> None:
    """``trainer.deterministic``: torch's deterministic kernels (warn_only: an op without one warns
    instead of failing). Without them one seed of a GPU run ends differently from run to run
    (docs/runs.md, "Same seed, same run"; tests/test_determinism_cuda.py); the CPU path is
    deterministic either way (tests/test_trainer.py: test_same_seed_same_result). Memory: the hash
    grid's backward chunks its deterministic index_add_ (src/representations/fields.py), which in
    one call raised a 512 px VSD step's peak past 16 GB."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(on, warn_only=True)
    # torch's deterministic mode also fills every torch.empty with NaN (a debugging aid): a kernel
    # launch per allocation on the GPU, not needed for repeatable results
    torch.utils.deterministic.fill_uninitialized_memory = False


class NonFinite(ArithmeticError):
    """What went non-finite (the loop turns it into Diverged); ``step``: the step whose state
    it is, when known (default: the step being taken)."""

    def __init__(self, what: str, step: int | None = None):
        super().__init__(what)
        self.step = step


def last_good(checkpoint: Path, step: int | None) -> str:
    """Where a stopped run can resume from (Diverged, DiskFull)."""
    return (f"the last good checkpoint is {checkpoint} (step {step})" if step is not None
            else "no checkpoint was written before it")


class Diverged(RuntimeError):
    """The run stopped at ``step``: a non-finite loss, gradient or parameter."""

    def __init__(self, step: int, what: str, last_good_step: int | None, checkpoint: Path):
        self.step, self.last_good_step = step, last_good_step
        where = last_good(checkpoint, last_good_step)
        super().__init__(f"diverged at step {step}: non-finite {what}; {where}. Lower the "
                         "learning rate or set trainer.grad_clip")


class DiskFull(OSError):
    """A write failed for want of space (ENOSPC): the run stops, naming the path and the last
    good checkpoint (atomic writes never replace it with a partial one); an OSError, so the
    command exits 2 (src/train.py)."""

    def __init__(self, path: Path | str, last_good_step: int | None, checkpoint: Path):
        self.message = (f"No space left on {path}: {last_good(checkpoint, last_good_step)}. Free some "
                        "space and rerun the same command to resume")
        super().__init__(errno.ENOSPC, self.message, str(path))

    def __str__(self) -> str:
        return self.message


class Interrupted(Exception):
    """SIGTERM / SIGINT: the step finished, a checkpoint was written, the run exits."""

    def __init__(self, signum: int, step: int, run_dir: Path):
        self.signum, self.step, self.run_dir = signum, step, Path(run_dir)
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}, checkpoint "
                         f"written in {self.run_dir}; resume with: {rundir.resume_command(run_dir)}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention for "ended by signal N"


class StopSignals:
    """SIGTERM and SIGINT set ``received`` instead of killing the process mid-step; the loop
    checkpoints and stops at the end of the step. A second signal acts at once (the previous
    handlers are back). Only replaces default handlers (submitit installs its own: it requeues
    on USR2 and ignores SIGTERM) and only in the main thread (where Python runs handlers)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        self.received = None
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                current = signal.getsignal(sig)
                if current in (signal.SIG_DFL, signal.default_int_handler):
                    self._previous[sig] = current
                    signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.received = signum
        self._restore()
        log.warning("%s received: stopping after this step (send it again to stop at once)",
                    signal.Signals(signum).name)

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __exit__(self, *exc) -> None:
        self._restore()


def read_metrics(run_dir: Path) -> dict | None:
    """<run_dir>/metrics.json, or None when absent or unreadable."""
    try:
        return json.loads((Path(run_dir) / METRICS).read_text())
    except (OSError, ValueError):
        return None


def _all_finite(tensors) -> bool:
    """One device sync for the lot (the check runs every step)."""
    flags = [torch.isfinite(t).all() for t in tensors if t.is_floating_point() or t.is_complex()]
    return not flags or bool(torch.stack([f.to(flags[0].device) for f in flags]).all())


def _state_tensors(obj, path: str = ""):
    """(dotted path, tensor) of every tensor in a nested state dict."""
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _state_tensors(v, f"{path}.{k}" if path else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _state_tensors(v, f"{path}[{i}]")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def validation_every(cfg: DictConfig, kind: str, max_steps: int) -> int:
    """Steps between validation grids: ``trainer.val_every``, or for ``auto`` VAL_FRACTION of
    the run (``max_steps``) for 3D representations (off for the others); 0 = off."""
    every = cfg.trainer.get("val_every", 0)
    if every == "auto":
        return max(1, round(VAL_FRACTION * max_steps)) if kind == "3d" else 0
    return int(every or 0)


# --- the loop -------------------------------------------------------------------------------
class Trainer:
    def __init__(self, cfg: DictConfig, run_dir: Path, record: RunRecord | None = None):
        self.cfg, self.run_dir, self.record = cfg, Path(run_dir), record
        self.device = resolve_device(str(cfg.device))
        if cfg.get("num_threads"):
            torch.set_num_threads(int(cfg.num_threads))
        set_determinism(bool(cfg.trainer.get("deterministic", True)))
        if record is not None:
            record.update(**device_info(self.device))
        self.c = build_components(cfg, self.device)
        self.clock = self.c.clock  # the run's length; the parts that read it are recorded with the run
        self._record_run_length_readers()
        rep = self.c.representation
        self.optimizer = OPTIMIZERS[str(cfg.trainer.optimizer)](rep.param_groups())
        warm = int(cfg.trainer.warmup_steps)
        # the warm-up times the representation's own per-group factor (Representation.lr_scale)
        self.lr_schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, [
            lambda s, name=g.get("name"): (min(1.0, (s + 1) / warm) if warm > 0 else 1.0) * rep.lr_scale(name, s)
            for g in self.optimizer.param_groups])
        self.step = 0
        self.checkpoint_step: int | None = None  # the step of checkpoints/last.pt on disk
        self.last_logs: dict[str, float] = {}  # the scalars of the last step (final_loss)
        self.train_seconds = 0.0  # over all attempts, as of self.step
        self.stop = StopSignals()

    # state --------------------------------------------------------------------------------
    def state(self) -> dict:
        return {"step": self.step, "representation": self.c.representation.state_dict(),
                "optimizer": self.optimizer.state_dict(), "lr_schedule": self.lr_schedule.state_dict(),
                "guidance": self.c.guidance.state_dict(), "identity": identity(self.cfg),
                "run_length_readers": self.clock.readers, "logs": self.last_logs,
                "train_seconds": self.train_seconds}

    def _record_run_length_readers(self) -> None:
        """run_info.json names every part that has read the run's length (src/clock.py)."""
        if self.record is not None:
            self.record.add_run_length_readers(self.clock.readers)

    def load(self, state: dict) -> None:
        rundir.check_same_run(f"{self.run_dir}'s checkpoint", state.get("identity") or {},
                              identity(self.cfg), state.get("run_length_readers"), lambda: int(state["step"]))
        self.c.representation.load_state_dict(state["representation"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_schedule.load_state_dict(state["lr_schedule"])
        self.c.guidance.load_state_dict(state["guidance"])
        self.step = self.checkpoint_step = int(state["step"])
        self.last_logs = dict(state.get("logs") or {})
        self.train_seconds = float(state.get("train_seconds") or 0.0)

    def save(self) -> None:
        """Checkpoint, unless some tensor of the state is non-finite: a good checkpoint is
        never replaced by a diverged one (the step checks make this a last line of defence)."""
        state = self.state()
        tensors = dict(_state_tensors({k: state[k] for k in ("representation", "optimizer", "guidance")}))
        if not _all_finite(tensors.values()):  # e.g. psi's Adam moments overflow, its weights not
            bad = next(k for k, t in tensors.items() if not _all_finite([t]))
            raise NonFinite(f"state at the checkpoint ({bad})", self.step)
        save_checkpoint(self.run_dir / CHECKPOINT, state)
        self.checkpoint_step = self.step
        self._record_run_length_readers()  # a part may read the run's length only while training

    def resume(self) -> None:
        """Load checkpoints/last.pt when the run dir holds one."""
        path = self.run_dir / CHECKPOINT
        if not path.exists():
            return
        try:
            state = load_checkpoint(self.run_dir, self.device)
        except Exception as err:  # atomic writes make this disk damage or a foreign file
            raise RunDirError(f"{path} cannot be read ({_first_line(err)}); move it away to "
                              "restart this run from step 0") from None
        self.load(state)

    # one step -----------------------------------------------------------------------------
    def train_step(self, step: int) -> dict[str, float]:
        c, dtype, seed = self.c, DTYPES[self.cfg.trainer.dtype], int(self.cfg.seed)
        # anything that draws from the global RNG (e.g. stratified ray samples) is step-seeded
        rng.seed_global(seed, rng.Stream.GLOBAL, step)
        c.representation.update_step(step)
        views = c.cameras.sample(step, rng.generator(seed, rng.Stream.CAMERA, step)).to(self.device)
        out = c.representation.render(views)
        x = out.x if out.x is not None else c.backbone.encode(out.rgb)
        g = c.guidance(x, views, step, out=out)
        target = (x - g.grad.to(x.dtype)).detach()
        loss_sd = 0.5 * ((x - target) ** 2).flatten(1).sum(1).mean()
        regs = c.representation.regularizers(out, step)
        loss = loss_sd + sum(regs.values(), torch.zeros((), device=loss_sd.device, dtype=loss_sd.dtype))
        if not torch.isfinite(loss):  # before any update: the parameters are still good
            raise NonFinite(f"loss ({float(loss.detach())})")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._check_and_clip_gradients()
        self.optimizer.step()
        self.lr_schedule.step()
        c.representation.after_optimizer_step(step, self.optimizer)  # e.g. densify / prune
        logs = c.guidance.update(x.detach().to(dtype), views, step)
        self._check_parameters()
        return {"loss": float(loss.detach()), "grad_norm": float(g.grad.flatten(1).norm(dim=1).mean()),
                "t": float(g.t.float().mean()), **{f"reg/{k}": float(v) for k, v in regs.items()},
                **g.logs, **logs, **c.representation.metrics()}

    def _check_and_clip_gradients(self) -> None:
        params = [p for p in self.c.representation.parameters() if p.grad is not None]
        if not params:
            return
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if not torch.isfinite(norm):
            raise NonFinite(f"gradient (norm {float(norm)})")
        if self.cfg.trainer.grad_clip:  # what clip_grad_norm_ does, with the norm computed once
            torch.nn.utils.clip_grads_with_norm_(params, float(self.cfg.trainer.grad_clip), norm)

    def _check_parameters(self) -> None:
        trained = [p.detach() for m in (self.c.representation, self.c.guidance)
                   for p in m.parameters() if p.requires_grad]
        if not _all_finite(trained):
            raise NonFinite("parameters after the update")

    # the run ------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train to trainer.max_steps (resuming from the checkpoint), evaluate, export, write
        metrics.json; returns the metrics. Raises Diverged, Interrupted, or what failed (then
        metrics.json says "failed")."""
        max_steps = self.clock.max_steps
        self.resume()
        if self.step >= max_steps:
            done = read_metrics(self.run_dir)
            if done is not None and done.get("status", FINISHED) == FINISHED:
                log.info("run in %s already finished (step %d); nothing to do", self.run_dir, self.step)
                return done
            log.info("run in %s reached step %d without final metrics: computing them from its "
                     "checkpoint", self.run_dir, self.step)
        elif self.step:
            log.info("resuming %s from step %d", self.run_dir, self.step)
        if self.record is not None:
            self.record.update(resumed_from_step=self.step)
        # an earlier attempt's outcome (kept in run_info.json) no longer describes the run
        (self.run_dir / METRICS).unlink(missing_ok=True)
        loggers = self._loggers()
        with self.stop:
            try:
                self.loop(loggers)
                return self.finish(loggers)
            except NonFinite as err:
                raise self.diverged(err, loggers) from None
            except Interrupted:
                raise
            except Exception as err:
                if isinstance(err, OSError) and err.errno == errno.ENOSPC and not isinstance(err, DiskFull):
                    full = DiskFull(err.filename or self.run_dir, self.checkpoint_step, self.run_dir / CHECKPOINT)
                    log.error("%s", full)
                    self.write_outcome(FAILED, _first_line(full))
                    raise full from err
                self.write_outcome(FAILED, _first_line(err))
                raise

    def loop(self, loggers: Loggers) -> None:
        cfg, max_steps = self.cfg, self.clock.max_steps
        sleep = float(cfg.trainer.get("step_sleep", 0) or 0)
        val_every = validation_every(cfg, self.c.representation.kind, max_steps)
        t0, seconds0 = time.monotonic(), self.train_seconds
        bar = self._progress(max_steps) if self.step < max_steps else None
        while self.step < max_steps:
            logs = self.train_step(self.step)
            self.step += 1
            self.last_logs = logs
            if sleep:
                time.sleep(sleep)  # only for preemption tests (trainer.step_sleep)
            self.train_seconds = seconds0 + time.monotonic() - t0
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
                bar.update(logs)
            self.check_stop()
        if bar is not None:
            bar.close()

    def check_stop(self) -> None:
        """After a signal: checkpoint this step (unless done already) and stop."""
        if self.stop.received is None:
            return
        if self.checkpoint_step != self.step:
            self.save()
        raise Interrupted(self.stop.received, self.step, self.run_dir)

    def finish(self, loggers: Loggers) -> dict:
        """Final evaluation, export and metrics.json; also what a run that reached max_steps
        without its metrics (killed in between) does on its next attempt."""
        metrics = {**self.evaluate(), **self.c.representation.metrics(),
                   "final_loss": self.last_logs.get("loss", float("nan")), "steps": float(self.step),
                   "wall_time_s": self.train_seconds,
                   "steps_per_s": self.step / self.train_seconds if self.train_seconds > 0 else float("nan")}
        self.check_stop()
        if self.cfg.trainer.export:
            export_dir = self.run_dir / "export"
            export_dir.mkdir(exist_ok=True)
            for path in self.c.representation.export(export_dir, self.c.cameras.eval_views()):
                loggers.log_media(f"export/{Path(path).stem}", path, self.step)
        from src.export.plots import plot_curves

        plot_curves(self.run_dir / "metrics.jsonl", self.run_dir / "loss.png")
        self.check_stop()
        metrics = {"status": FINISHED, **metrics}
        write_json_atomic(self.run_dir / METRICS, metrics)
        numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        loggers.log({f"{FINAL_PREFIX}{k}": v for k, v in numbers.items()}, self.step)
        loggers.finish(numbers)
        return metrics

    def diverged(self, cause: NonFinite, loggers: Loggers) -> Diverged:
        step = cause.step if cause.step is not None else self.step + 1
        err = Diverged(step, str(cause), self.checkpoint_step, self.run_dir / CHECKPOINT)
        log.error("%s", err)
        self.write_outcome(DIVERGED, str(err), step)
        loggers.finish({"status": DIVERGED, "failed_step": err.step})
        return err

    def write_outcome(self, status: str, error: str, failed_step: int | None = None) -> None:
        """metrics.json of a run that stopped before the end (status diverged / failed)."""
        try:
            write_json_atomic(self.run_dir / METRICS, {
                "status": status, "failed_step": failed_step or self.step + 1,
                "last_good_step": self.checkpoint_step, "error": error})
        except OSError as err:  # e.g. the full disk that stopped the run: keep its own error
            log.error("could not write %s: %s", self.run_dir / METRICS, err)

    @torch.no_grad()
    def validation_grid(self) -> Path | None:
        """<run_dir>/val/step_*.png (image / 3D representations): VAL_VIEWS of the evaluation
        views, evenly spaced (only those are rendered, as previews: Representation.preview),
        enlarged and labelled."""
        if self.c.representation.kind == "vector":
            return None
        import imageio.v2 as imageio

        from src.export.video import VAL_VIEWS, labelled_grid, render_frames, view_labels

        views = self.c.cameras.eval_views()
        k = min(VAL_VIEWS, len(views))
        views = views.select(torch.arange(k) * len(views) // k)  # evenly spaced (every 45 degrees of 24)
        frames = render_frames(self.c.representation, views.to(self.device), preview=True)
        title = f"step {self.step} / {int(self.cfg.trainer.max_steps)}"
        out = self.run_dir / "val" / f"step_{self.step:06d}.png"
        out.parent.mkdir(exist_ok=True)
        imageio.imwrite(out, labelled_grid(frames, view_labels(views), title, ncols=k))
        return out

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        views = self.c.cameras.eval_views().to(self.device)
        samples = self.c.representation.samples(views)
        return self.c.backbone.evaluate(samples, views, str(self.cfg.prompt or ""))

    def _loggers(self) -> Loggers:
        loggers = [JSONLLogger(self.run_dir, resume_step=self.step,
                               timestamps=bool(self.cfg.logger.get("timestamps", False)))]
        wcfg = self.cfg.logger.get("wandb")
        if wcfg is not None and wcfg.get("mode", "offline") != "disabled":
            loggers.append(WandbLogger(self.run_dir, OmegaConf.to_container(self.cfg, resolve=True),
                                       **OmegaConf.to_container(wcfg, resolve=True)))
        return Loggers(loggers)

    def _progress(self, max_steps: int) -> Progress | None:
        if not self.cfg.trainer.progress:
            return None
        return Progress(max_steps, self.step, desc=str(self.cfg.guidance._target_).split(".")[-1])


# --- one attempt at a run, start to end (src.train and src.api) ----------------------------
def run(cfg: DictConfig, run_dir: Path, files: dict[str, str] | None = None) -> tuple[dict, Trainer]:
    """Validate, own the run dir, build, fit; returns (metrics, trainer).

    Nothing in ``run_dir`` changes before the config is valid, no other live process holds the
    dir and the dir holds no other run (src/rundir.py). Then this attempt is recorded in
    run_info.json, ``.hydra/config.yaml`` and ``files`` ({relative path: text}, e.g. Hydra's
    overrides) are written, and stale temp files of killed writers are removed.
    """
    validate(cfg)
    run_dir = rundir.make(run_dir)
    ident = identity(cfg)

    def check() -> None:
        recorded = RunRecord(run_dir).read()
        if recorded.identity is not None:  # the readers of its length that its clock recorded
            rundir.check_same_run(run_dir, recorded.identity, ident, recorded.run_length_readers,
                                  lambda: _saved_step(run_dir))

    check()  # refuse a different run without touching the dir, even the lock file
    with rundir.RunLock(run_dir):
        check()  # again: another process may have claimed the dir in between
        record = RunRecord(run_dir)
        first = not record.read().attempts
        _remove_stale_temp_files(run_dir)
        record.begin(int(cfg.seed), ident)
        log.info("run dir: %s (resume: %s)", run_dir.resolve(), rundir.resume_command(run_dir))
        for rel, text in {".hydra/config.yaml": OmegaConf.to_yaml(cfg), **(files or {})}.items():
            atomic_write(run_dir / rel, lambda f, text=text: f.write(text.encode()))
        trainer, status, outcome = None, FAILED, {}
        try:
            trainer = Trainer(cfg, run_dir, record)
            metrics = trainer.fit()
            status, outcome = FINISHED, {"metrics": metrics}
            return metrics, trainer
        except Diverged as err:
            status, outcome = DIVERGED, {"error": str(err)}
            raise
        except Interrupted as err:
            status, outcome = INTERRUPTED, {"error": str(err)}
            raise
        except BaseException as err:  # an error, or an exit (e.g. submitit's requeue on USR2)
            status = FAILED if isinstance(err, Exception) else INTERRUPTED
            outcome = {"error": _first_line(err)}
            raise
        finally:
            if trainer is None and first and not (run_dir / CHECKPOINT).exists():
                _discard_claim(run_dir)  # failed while building (e.g. weights): leave nothing
            else:
                try:
                    record.end(status, step=trainer.step if trainer else None, **outcome)
                except OSError as err:  # e.g. the full disk that stopped the run: keep its error
                    log.error("could not record the end of this attempt in %s: %s", record.path, err)


def _saved_step(run_dir: Path) -> int | None:
    """The step a run dir's run has reached (finished metrics, else its checkpoint)."""
    done = read_metrics(run_dir)
    if done is not None and isinstance(done.get("steps"), (int, float)):
        return int(done["steps"])
    if (run_dir / CHECKPOINT).exists():
        return int(load_checkpoint(run_dir, "cpu")["step"])
    return None


def _remove_stale_temp_files(run_dir: Path) -> None:
    """Temp files of atomic writes killed mid-write (only safe under the run dir's lock)."""
    for folder in (run_dir, run_dir / CHECKPOINT.parent, run_dir / ".hydra"):
        for path in stale_temp_files(folder):
            log.warning("removing %s, left by a process killed while writing it", path)
            path.unlink(missing_ok=True)


def _discard_claim(run_dir: Path) -> None:
    for name in CLAIM_FILES:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
