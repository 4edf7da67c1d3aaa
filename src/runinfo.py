"""What is recorded with every run: seed, package versions, git revision, host, device, command, and
one entry per attempt (a run killed and resumed has several) in ``<run_dir>/run_info.json``."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

from src.fileio import atomic_write, to_json

PACKAGES = ("torch", "torchvision", "numpy", "diffusers", "transformers", "peft", "hydra-core",
            "omegaconf", "nerfacc", "gsplat", "submitit", "wandb", "lpips", "trimesh")
REPO_ROOT = Path(__file__).resolve().parents[1]
RUN_INFO = "run_info.json"
# An attempt's status while its process runs; an attempt found "running" by the next owner of
# the run dir (which holds the lock, so that process is gone) is marked "killed".
RUNNING, KILLED = "running", "killed"


def package_versions() -> dict[str, str | None]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_revision() -> dict[str, str | bool | None]:
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                                  timeout=10).stdout.strip() or None
        except (OSError, subprocess.TimeoutExpired):
            return None

    rev = git("rev-parse", "--verify", "-q", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": rev, "dirty": bool(status) if rev else None}


def run_info(seed: int) -> dict:
    return {
        "seed": seed,
        "started": now(),
        "host": socket.gethostname(),
        "command": sys.argv,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "git": git_revision(),
        "versions": package_versions(),
    }


def device_info(device) -> dict:
    """What the run computes on: a table assembled from several machines (a GPU's rows beside a
    CPU's) says which is which. The CPU's thread count, or the GPU's name."""
    if device.type == "cuda":
        return {"device": str(device), "gpu": torch.cuda.get_device_name(device)}
    return {"device": str(device), "threads": torch.get_num_threads()}


def write_json_atomic(path: Path, obj) -> None:
    """Strict JSON (non-finite numbers as null), written atomically."""
    text = to_json(obj, indent=2, sort_keys=True)
    atomic_write(path, lambda f: f.write(text.encode()))


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class RunRecord:
    """``<run_dir>/run_info.json``: the run's ``identity`` (src/rundir.py), the parts that read
    its length (``run_length_readers``, src/clock.py; null until its parts are built),
    ``attempts`` (one entry per process that ran it: start, end, status, host, command,
    versions, the step it resumed from), and the latest attempt's fields again at the top level.
    Written only by the process holding the run dir's lock."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / RUN_INFO
        self.identity: dict | None = None
        self.run_length_readers: list[str] | None = None
        self.attempts: list[dict] = []

    def read(self) -> RunRecord:
        if self.path.exists():
            try:
                info = json.loads(self.path.read_text())
            except ValueError as err:
                raise ValueError(f"{self.path} is not valid JSON ({err}); move it away to reuse "
                                 "this run directory") from None
            self.identity = info.get("identity")
            self.run_length_readers = info.get("run_length_readers")
            self.attempts = info.get("attempts") or [
                # a record written before attempts were kept: its one attempt
                {k: v for k, v in info.items() if k != "identity"} | {"status": "unknown"}]
        return self

    def begin(self, seed: int, identity: dict) -> dict:
        """Start an attempt (the caller holds the lock): earlier attempts still "running" died."""
        self.read()
        for attempt in self.attempts:
            if attempt.get("status") == RUNNING:
                attempt["status"] = KILLED
        self.identity = identity
        self.attempts.append({**run_info(seed), "attempt": len(self.attempts) + 1,
                              "pid": os.getpid(), "status": RUNNING})
        self.write()
        return self.attempts[-1]

    def add_run_length_readers(self, readers: list[str]) -> None:
        """Record that ``readers`` read the run's length (kept over attempts)."""
        known = list(self.run_length_readers or [])
        merged = known + [r for r in readers if r not in known]
        if self.run_length_readers is None or merged != known:
            self.run_length_readers = merged
            self.write()

    def update(self, **fields) -> None:
        self.attempts[-1].update(fields)
        self.write()

    def end(self, status: str, **fields) -> None:
        self.update(status=status, ended=now(), **fields)

    def write(self) -> None:
        write_json_atomic(self.path, {**self.attempts[-1], "identity": self.identity,
                                      "run_length_readers": self.run_length_readers,
                                      "attempts": self.attempts})
