"""Issue 29 items 3-4 on real processes and file systems: bad run and sweep directories refused
before anything runs (exit 2, the key or path named), a finished run in a read-only directory
skipped, a full disk (a real small tmpfs) ending with exit 2, the path and the last good
checkpoint named and an identical rerun, typo'd keys answered with the nearest ones, one final
line in metrics.jsonl, one sweep per sweep directory."""

from __future__ import annotations

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
from src.trainer import CHECKPOINT

REPO = Path(__file__).resolve().parents[1]
TOY = ["backbone=mog2d", "representation=particles", "representation.n_particles=16", "trainer.export=false",
       "trainer.progress=false", "num_threads=1"]
START_TIMEOUT_S = 180  # interpreter start-up on a loaded 2-core machine
ENV = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline",
       "OMP_NUM_THREADS": "1"}


def start(*args: str, cwd: Path = REPO, script: str | None = None) -> subprocess.Popen:
    cmd = [sys.executable, script] if script else [sys.executable, "-m", "src.train"]
    return subprocess.Popen([*cmd, *args], cwd=cwd, env=ENV, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=START_TIMEOUT_S)
    return proc.returncode, out


def mount_tmpfs(path: Path, options: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)]).returncode:
        pytest.skip("mounting a tmpfs needs root")


def umount(path: Path) -> None:
    subprocess.run(["umount", str(path)], check=False)


def test_bad_run_dirs_and_keys_are_refused_before_anything_runs(tmp_path):
    """Each refused with exit 2 and its key or path named, before Hydra writes anything: the
    processes start together (they are quick: no torch before the refusal)."""
    work = tmp_path / "cwd"  # hydra.run.dir='' would have written the run here
    work.mkdir()
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    long_name = tmp_path / ("a" * 300)
    read_only = tmp_path / "ro"
    mount_tmpfs(read_only, "ro,size=64k")
    try:
        cases = {
            "empty": (["hydra.run.dir="], "hydra.run.dir='' is empty"),
            "dangling": ([f"hydra.run.dir={tmp_path / 'dangling'}"],
                         f"is a symbolic link to {tmp_path / 'nowhere'}, which does not exist"),
            "long": ([f"hydra.run.dir={long_name}"], "is 300 bytes, longer than this file system allows (255)"),
            "read-only": ([f"hydra.run.dir={read_only}"],
                          f"hydra.run.dir={read_only} cannot be written (Read-only file system)"),
            "typos": (["trainer.steps=5", "guidance.lamda=1", f"hydra.run.dir={tmp_path / 'typo'}"],
                      "trainer.steps is not a key of this project's configs; did you mean trainer.max_steps"),
            "camera": (["camera.height=16", f"hydra.run.dir={tmp_path / 'camera'}"],
                       "camera.height=16 is invalid: ShapesWorld renders are backbone.resolution=32 px square"),
        }
        procs = {name: start(*args, cwd=work) for name, (args, _) in cases.items()}
        outs = {}
        for name, proc in procs.items():
            code, outs[name] = finish(proc)
            assert code == 2 and cases[name][1] in outs[name], (name, outs[name][-2000:])
            assert "Traceback" not in outs[name], name
    finally:
        umount(read_only)
    assert "guidance.lamda is not a key of this project's configs; did you mean guidance.lam" in outs["typos"]
    assert not list(work.iterdir())  # nothing written into the current directory
    assert not (tmp_path / "typo").exists() and not (tmp_path / "camera").exists()  # no run dir left


def test_a_finished_run_in_a_read_only_dir_is_skipped(tmp_path):
    archive = tmp_path / "archive"
    mount_tmpfs(archive, "size=1m")
    try:
        cfg = TOY + ["trainer.max_steps=5"]
        done, _ = train(compose(cfg), archive / "run")
        subprocess.run(["mount", "-o", "remount,ro", str(archive)], check=True)
        code, out = finish(start(*cfg, f"hydra.run.dir={archive / 'run'}"))
        assert code == 0, out[-2000:]
        assert f"{archive / 'run'} holds a finished run and cannot be written (Read-only file system): nothing to do" in out
        assert json.loads((archive / "run" / "metrics.json").read_text()) == json.loads(json.dumps(done))
    finally:
        umount(archive)


def test_a_full_disk_ends_with_exit_2_the_path_and_the_last_checkpoint_named_and_the_rerun_is_identical(tmp_path):
    """A real 64 KiB tmpfs: metrics.jsonl (a line per step) fills it mid-run."""
    cfg = TOY + ["trainer.max_steps=600", "trainer.log_every=1", "trainer.checkpoint_every=50"]
    ref, _ = train(compose(cfg), tmp_path / "ref")
    disk = tmp_path / "disk"
    mount_tmpfs(disk, "size=64k")
    run = disk / "run"
    try:
        code, out = finish(start(*cfg, f"hydra.run.dir={run}"))
        assert code == 2, out[-2000:]
        state = torch.load(run / CHECKPOINT, weights_only=False)  # intact: atomic writes
        step = state["step"]
        assert 0 < step < 600 and step % 50 == 0
        assert f"error: No space left on {run}/" in out
        assert f"the last good checkpoint is {run / CHECKPOINT} (step {step})" in out
        assert "Traceback" not in out and "unexpected pos" not in out
        saved = (run / "metrics.json")
        assert not saved.exists() or json.loads(saved.read_text())["status"] == "failed"
        subprocess.run(["mount", "-o", "remount,size=4m", str(disk)], check=True)  # space freed
        code, out = finish(start(*cfg, f"hydra.run.dir={run}"))
        assert code == 0, out[-2000:]
        assert f"resuming {run} from step {step}" in out
        res = json.loads((run / "metrics.json").read_text())
        for key in ("mode_coverage", "precision", "final_loss", "steps"):
            assert res[key] == ref[key], key
    finally:
        umount(disk)


def test_a_lost_metrics_json_is_recomputed_without_a_second_final_line(tmp_path):
    cfg = compose(TOY + ["trainer.max_steps=5"])
    first, _ = train(cfg, tmp_path)
    (tmp_path / "metrics.json").unlink()
    again, _ = train(cfg, tmp_path)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    finals = [r for r in lines if any(k.startswith("final/") for k in r)]
    assert len(finals) == 1 and finals[0]["final/final_loss"] == again["final_loss"] == first["final_loss"]


SWEEP = """
overrides:
  backbone: mog2d
  representation: particles
  trainer.max_steps: 2
grid:
  negative_prompt: ["{long}", ""]
"""


def test_sweep_run_dir_names_and_typos_are_refused_before_anything_is_recorded(tmp_path):
    long_file, typo_file = tmp_path / "long.yaml", tmp_path / "typo.yaml"
    long_file.write_text(SWEEP.format(long="x" * 280))
    typo_file.write_text(SWEEP.format(long="a").replace("trainer.max_steps", "trainer.steps"))
    script = str(REPO / "scripts" / "sweep.py")
    long_dir, typo_dir = tmp_path / "long_sweep", tmp_path / "typo_sweep"
    procs = [start(str(long_file), "--sweep-dir", str(long_dir), script=script),
             start(str(typo_file), "--sweep-dir", str(typo_dir), script=script),
             start("-m", *TOY, "trainer.max_steps=2", f"negative_prompt={'y' * 280},z",
                   f"hydra.sweep.dir={tmp_path / 'hydra_sweep'}")]
    (code, out), (typo_code, typo_out), (hydra_code, hydra_out) = [finish(p) for p in procs]
    assert code == 2 and "1 of 2 grid points are invalid; nothing was launched" in out, out[-2000:]
    assert "hydra.sweep.subdir=" in out and "longer than this file system allows (255)" in out
    assert "override_dirname.exclude_keys" in out and "Traceback" not in out
    assert not (long_dir / "sweep.yaml").exists()
    assert typo_code == 2 and "trainer.steps is not a key of this project's configs; did you mean " \
                              "trainer.max_steps" in typo_out, typo_out[-2000:]
    assert not typo_dir.exists()
    assert hydra_code == 2 and "1 of 2 grid points are invalid" in hydra_out, hydra_out[-2000:]
    assert "longer than this file system allows (255)" in hydra_out
    assert not [p for p in (tmp_path / "hydra_sweep").iterdir() if not p.name.startswith(".")]


def test_a_second_sweep_into_a_busy_sweep_dir_is_refused_naming_the_first(tmp_path):
    sweep_dir = tmp_path / "sweep"
    args = ["-m", *TOY, "trainer.max_steps=40", "seed=0,1", f"hydra.sweep.dir={sweep_dir}"]
    first = start(*args, "trainer.step_sleep=0.5")
    try:
        deadline = time.time() + START_TIMEOUT_S
        while not (sweep_dir / ".lock").exists() or not (sweep_dir / ".lock").read_text():
            assert time.time() < deadline and first.poll() is None, "the first sweep never started"
            time.sleep(0.2)
        spec = tmp_path / "seeds.yaml"
        spec.write_text("overrides:\n  backbone: mog2d\n  representation: particles\ngrid:\n  seed: [0, 1]\n")
        second = [start(*args), start(str(spec), "--sweep-dir", str(sweep_dir), script=str(REPO / "scripts" / "sweep.py"))]
        for code, out in map(finish, second):  # Hydra's own multirun, and scripts/sweep.py
            assert code == 2, out[-2000:]
            assert "another sweep runs in this sweep directory: " in out and f"(pid {first.pid} on" in out
            assert "Traceback" not in out
        assert not (sweep_dir / "sweep.yaml").exists()
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
