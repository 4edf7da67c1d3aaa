"""Resume by name (issue 30 item 1), on real ``python -m src.train`` processes: a run in its
default, time-stamped folder prints that folder and its resume command when it starts and when
a signal stops it; ``resume=RUN_DIR`` continues it from its checkpoint with its recorded config,
from any directory, and ends equal to an uninterrupted run."""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from src.api import compose, train
from src.trainer import CHECKPOINT

REPO = Path(__file__).resolve().parents[1]
TOY = ["backbone=mog2d", "representation=particles", "representation.n_particles=16", "guidance=vsd",
       "trainer.dtype=float64", "trainer.max_steps=40", "trainer.checkpoint_every=1000",
       "trainer.export=false"]
START_TIMEOUT_S = 180  # interpreter start-up on a loaded 2-core machine


def python(args: list[str], cwd: Path, **kw):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, **kw)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    out = proc.communicate(timeout=START_TIMEOUT_S)[0]
    return proc.returncode, out


def test_resume_by_name_continues_a_default_folder_run(tmp_path):
    ref, _ = train(compose(TOY), tmp_path / "ref")  # uninterrupted, in-process
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir(), elsewhere.mkdir()

    # no hydra.run.dir: the default folder outputs/<date>/<time>_vsd under the working directory
    # slow steps, and a metrics.jsonl line from step 1 on: stopped after one step, not ten
    owner = python(["-m", "src.train", *TOY, "num_threads=1", "trainer.step_sleep=0.5", "trainer.log_every=1"], work)
    started, deadline = "", time.time() + START_TIMEOUT_S
    while "run dir: " not in started and time.time() < deadline and owner.poll() is None:
        started += owner.stdout.readline()
    match = re.search(r"run dir: (\S+) \(resume: (python -m src\.train resume=\S+)\)", started)
    assert match, started[-2000:]
    run_dir, command = Path(match[1]), match[2]
    assert run_dir.parent.parent == work / "outputs" and run_dir.name.endswith("_vsd")
    assert command == f"python -m src.train resume={run_dir}"
    while not (run_dir / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.1)
    owner.send_signal(signal.SIGTERM)
    code, out = finish(owner)
    assert code == 128 + signal.SIGTERM, out[-2000:]
    assert f"checkpoint written in {run_dir}; resume with: {command}" in out
    killed_at = torch.load(run_dir / CHECKPOINT, weights_only=False)["step"]
    assert 0 < killed_at < 40

    # the recorded config is the run's: a changed key that defines the run is refused by name,
    # a folder without a run is named, and neither touches the run
    code, out = finish(python(["-m", "src.train", f"resume={run_dir}", "seed=7"], elsewhere))
    assert code == 2 and "holds a different run" in out and "seed: 0 -> 7" in out, out[-2000:]
    code, out = finish(python(["-m", "src.train", f"resume={elsewhere}"], elsewhere))
    assert code == 2 and f"no run there ({elsewhere}/.hydra/config.yaml is missing)" in out, out[-2000:]

    # the printed command, run from another directory, continues the run from its checkpoint
    # (with the recorded step_sleep set to 0, a key=value change resume= takes that does not
    # define the run: else the remaining steps would sleep)
    code, out = finish(python(["-m", "src.train", *shlex.split(command)[3:], "trainer.step_sleep=0"], elsewhere))
    assert code == 0, out[-2000:]
    assert f"finished: {run_dir}" in out
    res = json.loads((run_dir / "metrics.json").read_text())
    assert res["status"] == "finished"
    for key in ("mode_coverage", "precision", "final_loss", "steps"):
        assert res[key] == ref[key]
    attempts = json.loads((run_dir / "run_info.json").read_text())["attempts"]
    assert [a["status"] for a in attempts] == ["interrupted", "finished"]
    assert attempts[1]["resumed_from_step"] == killed_at
    assert sorted(p.name for p in (work / "outputs").glob("*/*")) == [run_dir.name]  # no new run
