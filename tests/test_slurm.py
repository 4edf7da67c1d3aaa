"""Sweeps on a real (one-node) Slurm: submission through the users' slurm_a100 launcher config,
requeue after a time limit with resume from the checkpoint, failure report, resubmission.

Run with `make test-slurm` or `pytest -m slurm tests/test_slurm.py` as root: the session fixture
installs slurm-wlm + munge if needed, starts the cluster (scripts/slurm_local.sh) and stops it.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.slurm, pytest.mark.filterwarnings("ignore::UserWarning")]

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "slurm_local.sh"
PARTITION = "local"
DEFAULT_STATE_DIR = "/tmp/distillery-slurm"  # scripts/slurm_local.sh's default
# Slurm checks time limits about once a minute and sends USR2 `signal_delay_s` before the limit,
# so a 1-minute limit interrupts a job 25-85 s after it starts: the slow runs below take longer
# than that (200 steps x 0.45 s), the fast ones finish in seconds.
STEPS, SLOW_STEP_S, CHECKPOINT_EVERY = 200, 0.45, 20
SWEEP_TIMEOUT_S = 600
TIMING_KEYS = {"wall_time_s", "steps_per_s"}
# The users' launcher, adapted to this CPU-only node only where it must be.
LAUNCHER_ARGS = [
    "hydra.launcher.gpus_per_node=null",
    f"hydra.launcher.partition={PARTITION}",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
    "hydra.launcher.timeout_min=1",
    "hydra.launcher.signal_delay_s=5",
]


@pytest.fixture(scope="session")
def slurm_cluster():
    """The one-node cluster of scripts/slurm_local.sh; started (and stopped) here unless it runs."""
    if os.geteuid() != 0:
        pytest.skip("the one-node Slurm needs root")
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        pytest.skip("no slurm and no apt-get to install it")
    state = Path(os.environ.get("SLURM_LOCAL_DIR", DEFAULT_STATE_DIR))
    env = {**os.environ, "SLURM_LOCAL_DIR": str(state), "SLURM_LOCAL_PARTITION": PARTITION}
    was_running = (
        subprocess.run(["bash", str(SCRIPT), "status"], env=env, capture_output=True).returncode
        == 0
    )
    t0 = time.time()
    out = subprocess.run(
        ["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr
    print(f"\nslurm up in {time.time() - t0:.1f}s" + (" (was running)" if was_running else ""))
    os.environ["SLURM_CONF"] = str(state / "slurm.conf")
    try:
        yield state
    finally:
        if not was_running:
            subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, timeout=120)


def _sweep(spec: dict, tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess, Path]:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    sweep_dir = tmp_path / "out"
    cmd = [
        sys.executable,
        str(REPO / "scripts" / "sweep.py"),
        str(path),
        "--launcher",
        "slurm_a100",
        "--sweep-dir",
        str(sweep_dir),
        *LAUNCHER_ARGS,
        *extra,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=SWEEP_TIMEOUT_S)
    return out, sweep_dir


def _metrics(run_dir: Path) -> dict:
    return {
        k: v
        for k, v in json.loads((run_dir / "metrics.json").read_text()).items()
        if k not in TIMING_KEYS
    }


def test_srun_answers(slurm_cluster):
    out = subprocess.run(
        ["srun", f"--partition={PARTITION}", "hostname"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and out.stdout.strip()


def test_time_limit_requeues_and_resumes_to_the_same_metrics(slurm_cluster, tmp_path):
    """2 x 2 grid: seed x per-step sleep. The slow runs hit the 1-minute limit, are requeued by
    submitit and resume from their checkpoint; each must end equal to the fast run of its seed,
    which ran uninterrupted with otherwise the same config."""
    spec = {
        "overrides": {
            "backbone": "mog2d",
            "representation": "particles",
            "guidance": "sds",
            "trainer.max_steps": STEPS,
            "trainer.checkpoint_every": CHECKPOINT_EVERY,
            "trainer.progress": False,
            "trainer.export": False,
        },
        # ++: works whether or not conf/config.yaml declares trainer.step_sleep
        "grid": {"++trainer.step_sleep": [0.0, SLOW_STEP_S], "seed": [0, 1]},
    }
    t0 = time.time()
    out, sweep_dir = _sweep(spec, tmp_path)
    elapsed = time.time() - t0
    print(f"\nrequeue sweep took {elapsed:.0f}s")
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]

    for seed in (0, 1):
        fast = sweep_dir / f"++trainer.step_sleep=0.0,seed={seed}"
        slow = sweep_dir / f"++trainer.step_sleep={SLOW_STEP_S},seed={seed}"
        assert _metrics(slow) == _metrics(fast)
        assert _metrics(slow)["steps"] == STEPS
        # the last attempt started from a checkpoint, and submitit logged the requeue
        assert json.loads((slow / "run_info.json").read_text())["resumed_from_step"] > 0
        assert json.loads((fast / "run_info.json").read_text())["resumed_from_step"] == 0
    logs = "".join(p.read_text() for p in (sweep_dir / ".submitit").rglob("*_log.out"))
    assert "Requeued job" in logs
    assert (sweep_dir / "report.md").exists()

    # Resubmitting the same sweep skips every finished run (no job reaches Slurm).
    again, _ = _sweep(spec, tmp_path)
    assert again.returncode == 0
    assert (again.stdout + again.stderr).count("skip, finished") == 4


def test_failed_job_is_reported_with_its_log(slurm_cluster, tmp_path):
    spec = {
        "overrides": {
            "backbone": "mog2d",
            "representation": "particles",
            "guidance": "sds",
            "trainer.max_steps": 5,
            "trainer.progress": False,
            "trainer.export": False,
            "trainer.optimizer": "sgd",
        },
        "grid": {"representation.lr": [0.01, 1e20]},
    }  # lr 1e20 overflows float32 at step 2: the job diverges (invalid values never launch)
    out, sweep_dir = _sweep(spec, tmp_path)
    assert out.returncode != 0
    failed = (sweep_dir / "failed.txt").read_text()
    assert "representation.lr=1e+20" in failed and "representation.lr=0.01" not in failed
    log = Path(failed.split("log: ")[1].split()[0])
    assert log.exists() and "diverged at step 2" in log.read_text()
    assert (sweep_dir / "representation.lr=0.01" / "metrics.json").exists()
