"""The single trainer: determinism, atomic checkpoints, resume, run records, loggers."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from src.api import compose, train
from src.trainer import CHECKPOINT, ConfigError, Trainer

REPO = Path(__file__).resolve().parents[1]
TOY = ["backbone=mog2d", "representation=particles", "representation.n_particles=16",
       "trainer.max_steps=40", "trainer.checkpoint_every=10", "trainer.dtype=float64"]


def params(trainer):
    return {k: v.clone() for k, v in trainer.c.representation.state_dict().items()}


@pytest.mark.parametrize("method", ["vsd", "dsd"])
def test_same_seed_same_result(tmp_path, method):
    cfg = compose(TOY + [f"guidance={method}"])
    _, a = train(cfg, tmp_path / "a")
    _, b = train(cfg, tmp_path / "b")
    for k, v in params(a).items():
        assert torch.equal(v, params(b)[k])
    _, c = train(compose(TOY + [f"guidance={method}", "seed=1"]), tmp_path / "c")
    assert not torch.equal(params(a)["x"], params(c)["x"])


@pytest.mark.parametrize("method", ["esd", "dsd"])
def test_killed_run_resumes_to_identical_parameters(tmp_path, monkeypatch, method):
    """Crash at step 27 (last checkpoint: 20), resume in the same dir: same end state."""
    overrides = TOY + [f"guidance={method}", "guidance.delta=previous" if method == "dsd" else "guidance.lam=0.5"]
    cfg = compose(overrides)
    m_ref, ref = train(cfg, tmp_path / "ref")

    original = Trainer.train_step

    def crashing(self, step):
        if step == 27:
            raise KeyboardInterrupt("killed")
        return original(self, step)

    monkeypatch.setattr(Trainer, "train_step", crashing)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "run")
    assert torch.load(tmp_path / "run" / CHECKPOINT, weights_only=False)["step"] == 20
    monkeypatch.setattr(Trainer, "train_step", original)
    m_res, res = train(cfg, tmp_path / "run")
    for k, v in params(ref).items():
        assert torch.equal(v, params(res)[k])
    assert {k: v for k, v in m_ref.items() if "time" not in k and "per_s" not in k} == \
           {k: v for k, v in m_res.items() if "time" not in k and "per_s" not in k}
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    assert info["resumed_from_step"] == 20
    # the log holds each step once: lines past the checkpoint were dropped on resume
    def steps_log(run):  # the final line carries wall-clock timings, which differ
        return (tmp_path / run / "metrics.jsonl").read_text().splitlines()[:-1]

    assert steps_log("run") == steps_log("ref") and len(steps_log("ref")) == 4


def test_sigkill_mid_run_then_resume_matches(tmp_path):
    """A real `python -m src.train` killed with SIGKILL between checkpoints resumes from its
    last one and ends with the metrics of an uninterrupted (in-process) run."""
    overrides = [*TOY, "guidance=vsd", "trainer.max_steps=60"]
    ref, _ = train(compose(overrides), tmp_path / "ref")
    run = tmp_path / "run"
    args = [sys.executable, "-m", "src.train", *overrides, "trainer.progress=false", "num_threads=1",
            f"hydra.run.dir={run}"]
    proc = subprocess.Popen(args + ["trainer.step_sleep=0.2"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180  # interpreter start-up can be slow on a loaded 2-core machine
    while not (run / CHECKPOINT).exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(run / CHECKPOINT, weights_only=False)["step"]
    assert 0 < killed_at < 60 and not (run / "metrics.json").exists()
    subprocess.run(args, cwd=REPO, check=True, capture_output=True)
    res = json.loads((run / "metrics.json").read_text())
    for key in ("mode_coverage", "precision", "final_loss"):
        assert res[key] == ref[key]
    assert json.loads((run / "run_info.json").read_text())["resumed_from_step"] == killed_at


def test_run_records_and_checkpoint_atomicity(tmp_path):
    metrics, _ = train(compose(TOY + ["guidance=sds"]), tmp_path)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == metrics and all(isinstance(v, (int, float)) for v in saved.values())
    assert {"mode_coverage", "precision", "final_loss", "steps"} <= saved.keys()
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["seed"] == 0 and info["versions"]["torch"] == torch.__version__.split("+")[0]
    assert "commit" in info["git"]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines][:4] == [10, 20, 30, 40]
    leftovers = [p.name for p in (tmp_path / "checkpoints").iterdir()]
    assert leftovers == ["last.pt"]  # no temp files: written then renamed


def test_finished_run_is_skipped_and_foreign_run_refused(tmp_path):
    cfg = compose(TOY + ["guidance=sds"])
    m1, _ = train(cfg, tmp_path)
    stamp = (tmp_path / CHECKPOINT).stat().st_mtime_ns
    m2, _ = train(cfg, tmp_path)
    assert m1 == m2 and (tmp_path / CHECKPOINT).stat().st_mtime_ns == stamp
    with pytest.raises(ConfigError, match="different run"):
        train(compose(TOY + ["guidance=sds", "seed=5"]), tmp_path)


def test_wandb_offline_logger(tmp_path):
    pytest.importorskip("wandb")
    train(compose(TOY + ["guidance=sds", "logger=wandb", "trainer.max_steps=10"]), tmp_path)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))


def test_validation_grids_are_written_and_logged(tmp_path):
    overrides = ["backbone=shapes", "representation=image", "guidance=sds", "trainer.max_steps=4",
                 "trainer.val_every=2", "trainer.export=false"]
    train(compose(overrides), tmp_path)
    assert sorted(p.name for p in (tmp_path / "val").iterdir()) == ["step_000002.png", "step_000004.png"]
