"""Stopping a sweep stops it (issue 30 items 2-3), on real processes: SIGTERM to a local multirun
of 6 jobs (Hydra's basic launcher; submitit_local) ends the running job with its checkpoint,
starts none of the 5 others and exits 128 + 15, naming the command that resumes the sweep; that
command finishes the rest, resuming the stopped run, with a "k of N done" line per job."""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from src.trainer import CHECKPOINT

REPO = Path(__file__).resolve().parents[1]
TOY = ["backbone=mog2d", "representation=particles", "representation.n_particles=16", "guidance=vsd",
       "trainer.dtype=float64", "trainer.max_steps=20", "trainer.checkpoint_every=1000",
       "trainer.export=false", "trainer.progress=false", "trainer.log_every=1", "num_threads=1"]
SEEDS = "seed=0,1,2,3,4,5"
START_TIMEOUT_S = 180  # interpreter start-up on a loaded 2-core machine


def stop_and_resume(tmp_path: Path, launcher: list[str], rerun_env: dict):
    sweep = tmp_path / "sweep"
    env = {**os.environ, "DISTILLERY_LOCAL_PARALLELISM": "1"}
    # slow steps, left out of the run dirs' names (so that the rerun may drop them); TOY logs from
    # step 1, so the first job is stopped after one slow step
    cmd = [sys.executable, "-m", "src.train", "-m", *TOY, SEEDS, *launcher, "trainer.step_sleep=0.5",
           "hydra.job.config.override_dirname.exclude_keys=[trainer.step_sleep]", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + START_TIMEOUT_S
    while not list(sweep.glob("*/metrics.jsonl")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=START_TIMEOUT_S)[0]
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    assert f"sweep dir: {sweep}" in out
    runs = [p for p in sweep.iterdir() if not p.name.startswith(".") and p.is_dir()]
    assert [p.name.split("seed=")[1].split(",")[0] for p in runs] == ["0"], out[-3000:]  # 0 later jobs
    stopped = runs[0]
    killed_at = json.loads((stopped / "run_info.json").read_text())["attempts"][0]["step"]
    assert (stopped / CHECKPOINT).exists() and not (stopped / "metrics.json").exists()
    assert 0 < killed_at < 20

    command = re.search(r"[Rr]esume it with: (python -m src\.train -m .*)", out)[1]
    args = shlex.split(command)
    assert args[3:] == [*cmd[3:-1], f"hydra.sweep.dir={sweep}"]
    # the printed command, once more (faster: no step_sleep, which does not define the runs)
    rerun = subprocess.run([sys.executable, *args[1:], "trainer.step_sleep=0"], cwd=REPO, text=True,
                           capture_output=True, timeout=4 * START_TIMEOUT_S, env={**env, **rerun_env})
    out = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, out[-3000:]
    finished = [json.loads(p.read_text())["status"] for p in sweep.glob("*/metrics.json")]
    assert finished == ["finished"] * 6
    attempts = json.loads((stopped / "run_info.json").read_text())["attempts"]
    assert [a["status"] for a in attempts] == ["interrupted", "finished"]
    assert attempts[1]["resumed_from_step"] == killed_at
    assert "6 of 6 done, 0 failed" in out
    return out


def test_sigterm_stops_a_basic_launcher_multirun_and_the_rerun_finishes_it(tmp_path):
    out = stop_and_resume(tmp_path, [], {})
    # one line per job, with the count and an ETA
    assert len(re.findall(r"finished: #\d seed=\d \| \d of 6 done, 0 failed, ETA \d+m\d\ds", out)) == 6


@pytest.mark.slow
def test_sigterm_stops_a_submitit_local_multirun_and_the_rerun_finishes_it(tmp_path):
    out = stop_and_resume(tmp_path, ["hydra/launcher=submitit_local"], {"DISTILLERY_LOCAL_PARALLELISM": "3"})
    assert len(re.findall(r"finished: #\d seed=\d \| \d of 6 done, 0 failed, ETA \d+m\d\ds", out)) == 6
