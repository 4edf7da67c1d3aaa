"""Run loggers: a local JSONL file always, Weights & Biases optionally (``logger=wandb``)."""

from __future__ import annotations

import json
from pathlib import Path


class JSONLLogger:
    """Appends one JSON object per log call to <run_dir>/metrics.jsonl."""

    def __init__(self, run_dir: Path, resume_step: int = 0):
        self.path = Path(run_dir) / "metrics.jsonl"
        if resume_step and self.path.exists():
            # drop lines logged after the checkpoint we resume from: they will be logged again
            kept = [line for line in self.path.read_text().splitlines()
                    if line and json.loads(line).get("step", 0) <= resume_step]
            self.path.write_text("".join(f"{line}\n" for line in kept))

    def log(self, scalars: dict, step: int) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **scalars}) + "\n")

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

    def __init__(self, run_dir: Path, config: dict, mode: str = "offline", project: str = "distillery",
                 entity: str | None = None, group: str | None = None, tags=(), name: str | None = None):
        import hashlib

        import wandb

        if mode not in ("offline", "online", "disabled"):
            raise ValueError(f"logger.wandb.mode={mode!r} is unknown; valid: offline, online, disabled")
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
