"""Process faults on real ``python -m src.train`` processes (issue 11 items 1-3), in one scenario
so that the processes start in parallel: one live owner per run dir, a different run refused
without a byte of the run dir changing, SIGTERM writes a checkpoint, the rerun resumes exactly,
a diverged run exits non-zero. SIGKILL mid-run:
tests/test_trainer.py::test_sigkill_mid_run_then_resume_matches (its rerun also proves that a
killed owner leaves no stale lock)."""

import hashlib
import json
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
       "trainer.dtype=float64", "trainer.max_steps=60", "trainer.checkpoint_every=1000",
       "trainer.export=false"]
START_TIMEOUT_S = 180  # interpreter start-up on a loaded 2-core machine


def cli(run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "src.train", *TOY, "num_threads=1", f"hydra.run.dir={run_dir}", *extra]


def start(run_dir: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(cli(run_dir, *extra), cwd=REPO, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


def snapshot(run_dir: Path) -> dict:
    return {str(p.relative_to(run_dir)): (hashlib.sha1(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_owner_refusals_sigterm_resume_and_divergence(tmp_path):
    ref, _ = train(compose(TOY), tmp_path / "ref")  # uninterrupted, in-process
    run, bad = tmp_path / "run", tmp_path / "diverges"
    # the owner: slow steps (step_sleep), no periodic checkpoint before the end, progress on
    # with its output a pipe (a log file, not a terminal), a metrics.jsonl line from step 1 on (so
    # the test goes on after one slow step, not ten; log_every does not define the run); beside
    # it, a run that diverges (sgd at a huge lr, a checkpoint every step)
    owner = start(run, "trainer.step_sleep=1.0", "trainer.log_every=1")
    diverging = start(bad, "trainer.optimizer=sgd", "representation.lr=1e200", "trainer.checkpoint_every=1",
                      "trainer.progress=false")
    deadline = time.time() + START_TIMEOUT_S
    while not (run / "metrics.jsonl").exists() and time.time() < deadline and owner.poll() is None:
        time.sleep(0.1)
    assert owner.poll() is None, "the owner ended before the test could share its run dir"

    # the owner paused (it cannot write): the same run is refused as busy, another run as
    # different, naming the keys, and neither changes a byte of the dir
    owner.send_signal(signal.SIGSTOP)
    before = snapshot(run)
    same, other = start(run), start(run, "seed=7", "score_model.lr=0.01")
    same_out, other_out = same.communicate(timeout=START_TIMEOUT_S)[0], other.communicate(timeout=START_TIMEOUT_S)[0]
    assert snapshot(run) == before  # .hydra/config.yaml and overrides.yaml included
    owner.send_signal(signal.SIGCONT)
    assert same.returncode == 2 and "in use by a running process" in same_out, same_out[-2000:]
    assert f"pid {owner.pid}" in same_out and "Traceback" not in same_out
    assert other.returncode == 2 and "holds a different run" in other_out, other_out[-2000:]
    assert "score_model.lr: 0.001 -> 0.01; seed: 0 -> 7" in other_out

    # SIGTERM: the owner ends its step, writes a checkpoint there and exits 128 + 15
    owner.send_signal(signal.SIGTERM)
    out, _ = owner.communicate(timeout=120)
    assert owner.returncode == 128 + signal.SIGTERM, out[-2000:]
    assert "stopped by SIGTERM" in out
    killed_at = torch.load(run / CHECKPOINT, weights_only=False)["step"]
    assert 0 < killed_at < 60 and not (run / "metrics.json").exists()  # not a multiple of 1000
    assert out.count("\r") == 0 and len(out) < 4000  # no tqdm redraws in a log file

    done = subprocess.run(cli(run), cwd=REPO, capture_output=True, text=True, timeout=START_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-2000:]
    res = json.loads((run / "metrics.json").read_text())
    assert res["status"] == "finished"
    for key in ("mode_coverage", "precision", "final_loss", "steps"):
        assert res[key] == ref[key]
    attempts = json.loads((run / "run_info.json").read_text())["attempts"]
    assert [a["status"] for a in attempts] == ["interrupted", "finished"]
    assert attempts[1]["resumed_from_step"] == killed_at

    # the diverged run: exit 3, the step and the checkpoint named, strict JSON, finite checkpoint
    out, _ = diverging.communicate(timeout=START_TIMEOUT_S)
    assert diverging.returncode == 3, out[-2000:]
    saved = json.loads((bad / "metrics.json").read_text(), parse_constant=lambda c: 1 / 0)
    assert saved["status"] == "diverged" and isinstance(saved["failed_step"], int)
    assert f"error: diverged at step {saved['failed_step']}" in out
    assert f"{bad / CHECKPOINT} (step {saved['last_good_step']})" in out
    state = torch.load(bad / CHECKPOINT, weights_only=False)
    assert state["step"] == saved["last_good_step"] == saved["failed_step"] - 1
    assert all(bool(torch.isfinite(v).all()) for v in state["representation"].values())
