"""Run loggers: a local JSONL file always, Weights & Biases optionally (``logger=wandb``), and
the progress display (a tqdm bar on a terminal, a log line now and then in a log file)."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from src.fileio import atomic_write, to_json

log = logging.getLogger(__name__)


# Prefix of the final metrics' keys (src/trainer.py: finish), logged once per run at its end.
FINAL_PREFIX = "final/"


class JSONLLogger:
    """Appends one strict-JSON object per log call to <run_dir>/metrics.jsonl; with
    ``timestamps`` (``+logger.timestamps=true``) each line also holds ``"unix_time"``, the
    wall clock when it was logged (scripts/bench_objects.py times a run's steps with it)."""

    def __init__(self, run_dir: Path, resume_step: int = 0, timestamps: bool = False):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.timestamps = bool(timestamps)
        if self.path.exists():
            self.keep_until(resume_step)

    def keep_until(self, step: int) -> None:
        """Drop lines logged after ``step`` (the checkpoint resumed from: they are logged again),
        the final metrics' line (an attempt that reaches the end logs it again: a run whose
        metrics.json was lost must not get two) and lines that are not JSON (half written when a
        disk filled or a process died), with a warning naming the file and line."""
        kept = []
        for number, line in enumerate(self.path.read_bytes().decode(errors="replace").split("\n"), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
            except ValueError:
                log.warning("%s:%d: dropped a damaged line (%d bytes, not JSON; half written by "
                            "a full disk or a killed process?)", self.path, number, len(line))
                continue
            if record.get("step", 0) <= step and not any(str(k).startswith(FINAL_PREFIX) for k in record):
                kept.append(line)
        atomic_write(self.path, lambda f: f.write("".join(f"{line}\n" for line in kept).encode()))

    def log(self, scalars: dict, step: int) -> None:
        try:
            with self.path.open("a") as f:
                stamp = {"unix_time": time.time()} if self.timestamps else {}
                f.write(to_json({"step": step, **scalars, **stamp}) + "\n")
        except OSError as err:  # e.g. a full disk: say which file
            raise OSError(err.errno, err.strerror, str(self.path)) from err

    def log_media(self, name: str, path: Path, step: int) -> None:
        pass

    def finish(self, summary: dict) -> None:
        pass


# file suffix -> the wandb media class that uploads it (W&B's Object3D reads .glb directly)
MEDIA = {".png": "Image", ".jpg": "Image", ".mp4": "Video", ".gif": "Video", ".glb": "Object3D"}


class WandbLogger:
    """W&B run in <run_dir>/wandb; ``mode`` offline (default), online or disabled.

    The run id is derived from the run directory so that a resumed run (preemption,
    requeue) continues the same W&B run. Media: images (.png, .jpg), videos (.mp4, .gif) and
    meshes (.glb, as a W&B 3D object); a file whose bytes were already uploaded by this run is
    not uploaded again (e.g. an export identical to the last validation grid).
    """

    MODES = ("offline", "online", "disabled")

    def __init__(self, run_dir: Path, config: dict, mode: str = "offline", project: str = "distillery",
                 entity: str | None = None, group: str | None = None, tags=(), name: str | None = None):
        import hashlib

        import wandb

        if mode not in self.MODES:
            raise ValueError(f"logger.wandb.mode={mode!r} is unknown; valid: {', '.join(self.MODES)}")
        run_id = hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]
        self.wandb = wandb
        self._uploaded: set[str] = set()
        self.run = wandb.init(project=project, entity=entity, group=group, tags=list(tags or []),
                              name=name or Path(run_dir).name, config=config, dir=str(run_dir),
                              mode=mode, id=run_id, resume="allow")

    def log(self, scalars: dict, step: int) -> None:
        self.run.log(scalars, step=step)

    def log_media(self, name: str, path: Path, step: int) -> None:
        path = Path(path)
        kind = MEDIA.get(path.suffix)
        if kind is None or not self._first_upload(path):
            return
        self.run.log({name: getattr(self.wandb, kind)(str(path))}, step=step)

    def _first_upload(self, path: Path) -> bool:
        import hashlib

        digest = hashlib.sha1(path.read_bytes()).hexdigest()
        if digest in self._uploaded:
            return False
        self._uploaded.add(digest)
        return True

    def finish(self, summary: dict) -> None:
        self.run.summary.update(summary)
        self.run.finish()


class Loggers:
    def __init__(self, loggers: list):
        self.loggers = loggers

    def log(self, scalars, step):
        for lg in self.loggers:
            lg.log(scalars, step)

    def log_media(self, name, path, step):
        for lg in self.loggers:
            lg.log_media(name, path, step)

    def finish(self, summary):
        for lg in self.loggers:
            lg.finish(summary)


# A log file (Slurm, nohup) gets one progress line per this many seconds: tqdm's redraws would
# add ~170 bytes per step (4 MB for a 25k-step job).
PROGRESS_LOG_EVERY_S = 60.0


class Progress:
    """A tqdm bar when stderr is a terminal; otherwise a log line (step, rate, ETA, loss) at
    most every PROGRESS_LOG_EVERY_S seconds, plus one at the end."""

    def __init__(self, total: int, initial: int, desc: str):
        self.total, self.step, self.desc = total, initial, desc
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True)
        self.t0 = self.last = time.monotonic()
        self.start = initial

    def update(self, logs: dict) -> None:
        self.step += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{logs['loss']:.4g}", t=int(logs["t"]))
        elif time.monotonic() - self.last >= PROGRESS_LOG_EVERY_S or self.step == self.total:
            self.last = time.monotonic()
            self._line(logs)

    def _line(self, logs: dict) -> None:
        rate = (self.step - self.start) / max(time.monotonic() - self.t0, 1e-9)
        eta = (self.total - self.step) / rate if rate > 0 else float("inf")
        log.info("%s step %d/%d (%.0f%%), %.3g steps/s, ETA %s, loss %.4g", self.desc, self.step,
                 self.total, 100 * self.step / self.total, rate, _duration(eta), logs["loss"])

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class SweepProgress:
    """A sweep's progress, one line per ended job: "k of N done, f failed, ETA". ``done`` /
    ``failed``: runs that count before this launch (finished or diverged in an earlier one).
    The ETA assumes the remaining runs take as long as those ended in this launch so far (their
    rate, so it holds for jobs running side by side too)."""

    def __init__(self, points: list[list[str]], done: int = 0, failed: int = 0):
        self.total, self.done, self.failed = len(points), done, failed
        # the overrides that differ between points: what names a job in its line
        self.swept = {o for p in points for o in p if sum(o in q for q in points) < len(points)}
        self.ended_here, self.stopped = 0, 0
        self.t0 = time.monotonic()

    def start(self) -> None:
        """The first job starts now (the ETA's clock; checks before it do not count)."""
        if not self.ended_here:
            self.t0 = time.monotonic()

    def label(self, overrides: list[str]) -> str:
        return " ".join(o for o in overrides if o in self.swept) or " ".join(overrides)

    def job_ended(self, what: str, ok: bool) -> str:
        self.ended_here += 1
        if ok:
            self.done += 1
        else:
            self.failed += 1
        return f"{'finished' if ok else 'FAILED'}: {what} | {self.summary()}"

    def job_stopped(self, what: str) -> str:
        """A job stopped by a signal (checkpointed: the rerun resumes it)."""
        self.stopped += 1
        return f"stopped: {what} (checkpointed) | {self.summary()}"

    def summary(self) -> str:
        if self.stopped:
            return f"{self.done} of {self.total} done, {self.failed} failed, {self.stopped} stopped"
        left = self.total - self.done - self.failed
        rate = self.ended_here / max(time.monotonic() - self.t0, 1e-9)
        eta = _duration(left / rate) if rate > 0 and left else ("0m00s" if not left else "?")
        return f"{self.done} of {self.total} done, {self.failed} failed, ETA {eta}"
