"""Hydra launchers for sweeps: hydra-submitit-launcher plus what a long sweep needs.

Selected by ``_target_`` in conf/hydra/launcher/{submitit_local,slurm_a100}.yaml (Hydra only
accepts launcher classes under the ``hydra_plugins`` namespace; the repository root is on
``sys.path`` for ``python -m src.train``). On top of the plugin's launchers these

- skip grid points whose run directory already holds ``metrics.json`` with status
  "finished" (a resubmitted sweep only runs what is missing; the trainer would also skip them,
  but on a cluster that still costs a queue slot and a Python start-up per run) or "diverged"
  (it would diverge again: listed as failed, with its error); "failed" runs run again,
- wait for *all* jobs and then report every failed one with its run directory and the
  submitit log that holds its traceback, instead of stopping at the first failure,
- limit how many local jobs run at once (submitit's local executor starts them all), and give
  each local job one GPU, round-robin (``local_gpus``, ``gpus_of_job``),
- print one line per ended job with "k of N done, f failed, ETA" (Slurm: polled),
- stop a local sweep on SIGTERM / SIGINT (``StopRequests``): the running jobs end their step,
  checkpoint and exit, no further job starts, and the command exits 128 + N; rerunning it
  resumes the stopped runs and runs the rest,
- give every job one torch.compile cache in the sweep dir (``COMPILE_CACHE_DIR``), so that a
  sweep compiles once.

Preemption and time limits: the plugin's launcher object is the callable submitit runs, and it
has submitit's ``checkpoint()`` (it returns a ``DelayedSubmission`` of itself with the same
arguments). On USR2, which Slurm sends ``signal_delay_s`` before the time limit or on
preemption, submitit calls it, pickles the result and runs ``scontrol requeue``, as long as the
job has timed out fewer than ``max_num_timeout`` times (preemptions do not count). The requeued
job runs the same overrides in the same run directory (``hydra.sweep.dir``/``subdir`` do not
depend on time), and the trainer resumes from ``checkpoints/last.pt``. Work since that
checkpoint is redone, so the result equals an uninterrupted run.

`scontrol requeue` runs inside the job it requeues, so Slurm's SIGTERM to the job's processes
can reach it before it exits; submitit then raises, writes a failed result and the sweep reports
a run that was in fact requeued (seen once in CI's requeue test). On Slurm the job tolerates that
one exit (``tolerate_requeue_race``).
"""

import json
import logging
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher import submitit_launcher as plugin
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf

from src.loggers import SweepProgress
from src.rundir import resume_sweep_command

log = logging.getLogger(__name__)

FINISHED_MARKER = "metrics.json"  # the trainer writes it last, after the final checkpoint
# metrics.json "status" values (src/trainer.py) for which a resubmission does not run the job
SKIPPED_STATUSES = ("finished", "diverged")
FAILED_LIST = "failed.txt"  # in the sweep dir: one failed run per line, with its log
# Local jobs running at once (submitit's local executor starts all of them). An environment
# variable because conf/hydra/launcher/submitit_local.yaml is held to the plugin's schema, which
# has no such key. Default: as many as there are cpus_per_task slices of this machine.
LOCAL_PARALLELISM_ENV = "DISTILLERY_LOCAL_PARALLELISM"
# Thread pools sized to the job's CPUs: torch otherwise starts one OpenMP thread per core in
# every job, and jobs sharing cores then spin-wait on each other (measured: 100x slower).
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
# torch.compile's on-disk caches (inductor's FX graph and AOT autograd caches, its Triton kernels)
# for every job of a sweep in one folder of the sweep dir, on the file system the jobs share: the
# first job compiles, the others load (benchmarks/objects.md, compile cache). A value already in
# the environment wins.
COMPILE_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
COMPILE_CACHE_DIR = ".compile_cache"
# Seconds between looks at the running jobs: a local job's end is a file's existence; on Slurm
# submitit asks sacct, which sites ask users not to call more than every few seconds.
POLL_S = {"local": 1.0, "slurm": 30.0}


def local_gpus() -> list[int]:
    """gpus_per_node: null for local jobs = the GPUs this process sees, shared by every job.

    submitit's local executor sets each job's CUDA_VISIBLE_DEVICES to its first
    ``gpus_per_node`` GPUs, so 0 runs the jobs on the CPU even on a GPU machine (found running
    the ShapesWorld sweeps on the lent H100: 64 jobs on the CPU). Entries of
    CUDA_VISIBLE_DEVICES that are not indices (GPU UUIDs) cannot be passed through submitit:
    then the jobs see GPUs 0..n-1 of the machine."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and all(v.strip().isdigit() for v in visible.split(",") if v.strip()):
        ids = [int(v) for v in visible.split(",") if v.strip()]
    else:
        import torch  # the job imports it anyway

        ids = list(range(torch.cuda.device_count()))
    return ids


def use_compile_cache(sweep_dir: Path) -> Path:
    """In a job: torch.compile's cache is the sweep's (COMPILE_CACHE_DIR), unless set already."""
    os.environ.setdefault(COMPILE_CACHE_ENV, str(sweep_dir / COMPILE_CACHE_DIR))
    return Path(os.environ[COMPILE_CACHE_ENV])


def gpus_of_job(position: int, gpus: Sequence[int], per_job: int) -> list[int]:
    """The GPUs of the ``position``-th launched local job: ``per_job`` of ``gpus`` round-robin
    (one each: job i sees GPU i mod n), so that jobs share a GPU only when there are more jobs
    at once than GPUs."""
    if not gpus or per_job <= 0:
        return []
    if per_job > len(gpus):
        raise ValueError(f"hydra.launcher.gpus_per_node={per_job}, but this machine shows {len(gpus)} "
                         f"GPUs ({','.join(map(str, gpus))})")
    return [gpus[(position * per_job + j) % len(gpus)] for j in range(per_job)]


class _OwnSession:
    """What ``submitit.local.local`` sees as ``subprocess`` while this launcher submits: job
    controllers start in a session of their own, so a Ctrl-C or a ``timeout`` (signals to the
    whole process group) reaches this process only, which stops each job once (StopRequests).
    In the group, the controller would forward the signal a second time (and kill its job 1 s
    after a SIGINT), which stops a trainer at once, without its checkpoint."""

    def __getattr__(self, name: str):
        return getattr(subprocess, name)

    @staticmethod
    def Popen(*args, **kwargs):  # noqa: N802 (subprocess's name)
        return subprocess.Popen(*args, start_new_session=True, **kwargs)


class StopRequests:
    """``with StopRequests() as stop:`` in the process that launches local jobs: SIGTERM /
    SIGINT set ``stop.received`` and are passed on (as SIGTERM, to the controller, which passes
    it to its job) to every job in ``stop.jobs``; the launcher starts no further job. A job's
    trainer ends its step, checkpoints and exits (src/trainer.py: StopSignals); a second signal
    stops the jobs at once."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: int | None = None
        self.jobs: list = []
        self._previous: dict = {}

    def __enter__(self) -> "StopRequests":
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        first = self.received is None
        self.received = signum
        log.warning(f"{signal.Signals(signum).name} received: "
                    + ("stopping the running jobs after their step, starting no other"
                       if first else "stopping the running jobs at once"))
        for job in self.jobs:
            process = getattr(job, "_process", None)
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclass
class Failure:
    index: int
    overrides: list[str]
    run_dir: Path
    log: Path
    error: str

    def line(self) -> str:
        return (
            f"#{self.index} {' '.join(self.overrides)}\n    error: {self.error}\n"
            f"    run dir: {self.run_dir}\n    log: {self.log}"
        )


class SweepFailed(RuntimeError):
    pass


def run_dir_of(sweep_config) -> Path:
    """The run directory Hydra will use for one job of a multirun."""
    hydra = sweep_config.hydra
    return Path(str(hydra.sweep.dir)) / str(hydra.sweep.subdir)


class _SweepLauncher:
    """Mixin over the plugin's BaseSubmititLauncher; see the module docstring."""

    _EXECUTOR: str

    def __call__(self, *args: Any) -> JobReturn:
        cpus = self.params.get("cpus_per_task")
        if cpus:
            for var in THREAD_ENV_VARS:
                os.environ.setdefault(var, str(cpus))
            if "torch" in sys.modules:  # imported already: too late for the variables
                sys.modules["torch"].set_num_threads(int(cpus))
        use_compile_cache(Path(str(self.config.hydra.sweep.dir)))
        self._requeueing = False
        if self._EXECUTOR == "local":
            # submitit ignores SIGTERM in a job (on Slurm it comes before the kill of a requeue);
            # a local one comes from StopRequests: the trainer checkpoints and stops
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        try:
            ret = super().__call__(*args)  # type: ignore[misc]
        except SystemExit as exit:
            if self._requeueing:  # submitit's own exit after `scontrol requeue`
                raise
            # The task called sys.exit: without a result file submitit cannot tell the job
            # ended (without Slurm accounting it would wait forever); report it as failed.
            ret = JobReturn(
                overrides=list(args[0]),
                status=JobStatus.FAILED,
                _return_value=RuntimeError(f"the job exited with status {exit.code}"),
            )
        if ret.status == JobStatus.FAILED:
            # Hydra keeps the exception for the submitting process only; print it here so that
            # the job's own log (reported on failure) shows the traceback.
            traceback.print_exception(ret._return_value, file=sys.stderr)
        return ret

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Called by submitit on USR2 (time limit, preemption): requeue this same call."""
        self._requeueing = True
        return super().checkpoint(*args, **kwargs)  # type: ignore[misc]

    # -- launch ---------------------------------------------------------------------------------

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"sweep dir: {sweep_dir.resolve()} ({len(job_overrides)} runs, submitit '{self._EXECUTOR}')")

        returns: list[JobReturn | None] = [None] * len(job_overrides)
        failures: list[Failure] = []
        todo = []  # (position, index, overrides, run_dir)
        for pos, overrides in enumerate(job_overrides):
            idx = initial_job_idx + pos
            run_dir = self._run_dir(list(overrides))
            outcome = _outcome(run_dir)
            if outcome.get("status") in SKIPPED_STATUSES:
                log.info(f"\t#{idx} : skip, {outcome['status']} in {run_dir}")
                if outcome["status"] == "finished":
                    returns[pos] = JobReturn(
                        overrides=list(overrides), working_dir=str(run_dir), status=JobStatus.COMPLETED
                    )
                else:
                    error = RuntimeError(str(outcome.get("error", outcome["status"])))
                    returns[pos] = JobReturn(
                        overrides=list(overrides), working_dir=str(run_dir),
                        status=JobStatus.FAILED, _return_value=error,
                    )
                    failures.append(Failure(idx, list(overrides), run_dir,
                                            run_dir / FINISHED_MARKER, _first_line(error)))
                continue
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            todo.append((pos, idx, list(overrides), run_dir))

        progress = SweepProgress([list(o) for o in job_overrides],
                                 done=len(job_overrides) - len(todo) - len(failures), failed=len(failures))
        progress.start()
        with StopRequests() if self._EXECUTOR == "local" else _NoStop() as stop:
            launched = 0
            for chunk in self._chunks(todo):
                if stop.received is not None:
                    break
                jobs = self._submit(chunk, launched)
                launched += len(chunk)
                stop.jobs = jobs
                if stop.received is not None:  # a signal while submitting: these stop too
                    stop._handle(stop.received, None)
                pending = list(zip(chunk, jobs))
                while pending:
                    ended = [(c, job) for c, job in pending if job.done()]
                    for (pos, idx, ov, run_dir), job in ended:
                        returns[pos], failure = self._collect(job, idx, ov, run_dir)
                        if failure and stop.received is not None:
                            log.warning(progress.job_stopped(f"#{idx} {progress.label(ov)}"))
                            continue
                        if failure:
                            failures.append(failure)
                            log.error(f"job failed: {failure.line()}")
                        log.info(progress.job_ended(f"#{idx} {progress.label(ov)}", failure is None))
                    pending = [p for p in pending if p not in ended]
                    if pending:
                        time.sleep(POLL_S[self._EXECUTOR])
        if stop.received is not None:
            log.error(f"sweep stopped by {signal.Signals(stop.received).name}: {progress.summary()}; "
                      f"no further job started. Resume it with: "
                      f"{resume_sweep_command(sys.argv[1:], sweep_dir)}")
            raise SystemExit(128 + stop.received)

        (sweep_dir / FAILED_LIST).unlink(missing_ok=True)
        if failures:
            text = "\n".join(f.line() for f in failures)
            (sweep_dir / FAILED_LIST).write_text(text + "\n")
            raise SweepFailed(
                f"{len(failures)} of {len(job_overrides)} runs failed "
                f"(listed in {sweep_dir / FAILED_LIST}):\n{text}"
            )
        return [r for r in returns if r is not None]

    def _submit(self, chunk: list, launched: int) -> list:
        """Submit a chunk of jobs; local ones one by one, each with its GPUs (gpus_of_job) and
        its controller in a session of its own (_OwnSession)."""
        executor, gpus = self._executor()
        args = [
            (ov, "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state())
            for _, idx, ov, _ in chunk
        ]
        if self._EXECUTOR != "local":
            return executor.map_array(self, *zip(*args))
        per_job = self.params.get("gpus_per_node")
        per_job = (1 if gpus else 0) if per_job is None else int(per_job)
        return submit_local(executor._executor, self, args, gpus, per_job, first=launched)

    # -- parts ----------------------------------------------------------------------------------

    def _run_dir(self, overrides: list[str]) -> Path:
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        # sweep.subdir may use ${hydra:...}; resolving it needs the job's HydraConfig.
        previous = HydraConfig.instance().cfg
        HydraConfig.instance().set_config(cfg)
        try:
            return run_dir_of(cfg)
        finally:
            if previous is not None:
                HydraConfig.instance().cfg = previous

    def _chunks(self, todo: list) -> list[list]:
        if self._EXECUTOR == "local":
            default = (os.cpu_count() or 1) // (self.params.get("cpus_per_task") or 1)
            size = int(os.environ.get(LOCAL_PARALLELISM_ENV) or max(default, 1))
        else:
            size = max(len(todo), 1)  # Slurm enforces array_parallelism itself (%N)
        return [todo[i : i + size] for i in range(0, len(todo), size)]

    def _executor(self):
        """The plugin's executor set-up (submitit_launcher.launch), minus our own keys; and the
        GPUs local jobs share out (local_gpus; [] on Slurm)."""
        import submitit

        params = dict(self.params)
        init_keys = {"submitit_folder", "max_num_timeout"}
        init = {"folder": params["submitit_folder"]}
        if "max_num_timeout" in params:
            init[f"{self._EXECUTOR}_max_num_timeout"] = params["max_num_timeout"]
        gpus: list[int] = []
        if self._EXECUTOR == "local":
            gpus = local_gpus()
            params["gpus_per_node"] = 0  # per job, in submit_local
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init)
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(
            **{
                k if k in base else f"{self._EXECUTOR}_{k}": v
                for k, v in params.items()
                if k not in init_keys
            }
        )
        return executor, gpus

    @staticmethod
    def _collect(
        job, idx: int, overrides: list[str], run_dir: Path
    ) -> tuple[JobReturn, Failure | None]:
        log_path = Path(job.paths.stderr)
        try:
            ret = job.results()[0]
        except Exception as e:  # the job died: killed, out of memory, timed out too often
            ret = JobReturn(
                overrides=overrides,
                working_dir=str(run_dir),
                status=JobStatus.FAILED,
                _return_value=e,
            )
            return ret, Failure(idx, overrides, run_dir, log_path, _first_line(e))
        if ret.status == JobStatus.FAILED:
            return ret, Failure(idx, overrides, run_dir, log_path, _first_line(ret._return_value))
        return ret, None


def submit_local(executor, fn, args: list[tuple], gpus: Sequence[int], per_job: int, first: int = 0) -> list:
    """``fn(*a)`` for each ``a`` of ``args`` as a job of submitit's LocalExecutor ``executor``;
    job ``first + i`` sees ``gpus_of_job(first + i, gpus, per_job)`` as CUDA_VISIBLE_DEVICES."""
    from unittest import mock

    import submitit.local.local

    jobs = []
    with mock.patch.object(submitit.local.local, "subprocess", _OwnSession()):
        for i, a in enumerate(args):
            mine = gpus_of_job(first + i, gpus, per_job)
            executor.update_parameters(gpus_per_node=len(mine), visible_gpus=tuple(mine))
            jobs.append(executor.submit(fn, *a))
    return jobs


class _NoStop:
    """StopRequests' place on Slurm: the submitting process does not own the jobs' signals."""

    received = None
    jobs: list = []

    def __enter__(self) -> "_NoStop":
        return self

    def __exit__(self, *exc) -> None:
        pass


def _outcome(run_dir: Path) -> dict:
    """The run's metrics.json ({} when absent or unreadable); one without a status is a
    finished run of an older version."""
    try:
        saved = json.loads((run_dir / FINISHED_MARKER).read_text())
    except (OSError, ValueError):
        return {}
    return {"status": "finished", **saved} if isinstance(saved, dict) else {}


def _first_line(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".strip()
    return text.splitlines()[0] if text else type(error).__name__


class LocalLauncher(_SweepLauncher, plugin.LocalLauncher):
    pass


class SlurmLauncher(_SweepLauncher, plugin.SlurmLauncher):
    def __call__(self, *args: Any) -> JobReturn:
        tolerate_requeue_race()  # runs in the job, before submitit may need it
        return super().__call__(*args)


def tolerate_requeue_race() -> None:
    """Make submitit's Slurm requeue count `scontrol requeue` killed by SIGTERM as done.

    The requeue itself makes slurmstepd send SIGTERM to every process of the job, the
    `scontrol` child included, which may not have exited yet. Any other failure still raises.
    Idempotent; patches the class because submitit's signal handler holds its own instance."""
    from submitit.slurm.slurm import SlurmJobEnvironment

    original = SlurmJobEnvironment._requeue
    if getattr(original, "tolerates_sigterm", False):
        return

    def _requeue(env: SlurmJobEnvironment, countdown: int) -> None:
        try:
            original(env, countdown)
        except subprocess.CalledProcessError as e:
            if e.returncode != -signal.SIGTERM:
                raise
            log.warning(
                f"`scontrol requeue {env.job_id}` was stopped by SIGTERM, the job's own requeue; "
                f"requeued ({countdown} remaining timeouts)"
            )

    _requeue.tolerates_sigterm = True  # type: ignore[attr-defined]
    SlurmJobEnvironment._requeue = _requeue  # type: ignore[method-assign]
