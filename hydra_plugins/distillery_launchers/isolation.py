"""Running jobs in processes of their own, beside the launchers: the one place outside Hydra's
launchers that starts job processes (tests/test_architecture.py: one job runner).

- ``run_command``: one command in its own process group, killed whole at a time limit (a GPU
  bench's whole-run job: ``scripts/bench_objects.py`` runs one multirun through the
  ``submitit_local`` launcher this way).
- ``Worker``: a long-lived worker process that answers jobs (JSON lines on its stdin) with one
  result line each on its stdout, killed at a per-job time limit and restarted by the caller;
  what a GPU bench's timing jobs need (``scripts/bench_sd_gpu.py``): a CUDA context and a build
  of nerfacc kept across jobs, yet a hung or crashed job cannot take the bench down.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

RESULT = "@@RESULT "  # the prefix of a worker's result lines (other stdout is a library's)
TIMEOUT = "timeout"


def run_command(cmd: list[str], *, cwd: Path, env: dict, log, timeout_s: float) -> int | str:
    """Run ``cmd`` with stdout and stderr into ``log``; its exit code, or ``TIMEOUT`` after the
    whole process group was killed at ``timeout_s`` seconds."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the group of the command we started, children too
        proc.wait()
        return TIMEOUT


def answer(row: dict) -> None:
    """A worker's reply to its current job (the one line ``Worker.ask`` waits for)."""
    print(RESULT + json.dumps(row), flush=True)


class Worker:
    """One worker process (``argv`` after the Python executable) and its answers."""

    def __init__(self, argv: list[str], log, cwd: Path, env: dict | None = None):
        import sys

        self.proc = subprocess.Popen([sys.executable, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=log, text=True, cwd=str(cwd),
                                     env={**(env or os.environ), "PYTHONUNBUFFERED": "1"})
        self.lines: queue.Queue = queue.Queue()
        self.log = log
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)  # EOF: the worker exited

    def ask(self, job: dict, timeout_s: float) -> dict | None:
        """The job's result row, or None if the worker died or timed out (then it is killed)."""
        try:
            self.proc.stdin.write(json.dumps(job) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return None
        deadline = time.time() + timeout_s
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.time(), 0.01))
            except queue.Empty:
                self.kill()
                return None
            if line is None:  # its stdout closed: it is exiting; reap it, so why_lost sees its code
                try:
                    self.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.kill()
                return None
            if line.startswith(RESULT):
                return json.loads(line[len(RESULT):])
            self.log.write(line)  # stray stdout of libraries

    def why_lost(self) -> str:
        """Why the last ``ask`` returned None."""
        return "timed out" if self.proc.poll() is None or self.proc.returncode == -9 else \
            f"worker exited with code {self.proc.returncode}"

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()  # our own child, by its handle
            self.proc.wait()

    def close(self, quit_job: dict):
        """Ask the worker to end (``quit_job``), else kill it."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps(quit_job) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except Exception:
                self.kill()
