"""scripts/bench_objects.py's window and extrapolation (issue 31): the window renders each phase of
the paper's resolution schedule for --window steps under the trainer's own rule, and the object's
time is the formula of its docstring."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import bench_objects as bo  # noqa: E402

from src.clock import run_length  # noqa: E402
from src.representations.nerf import NeRF  # noqa: E402


def test_window_renders_each_phase_for_window_steps_under_the_trainers_rule():
    row = next(r for r in bo.ROWS if r.name == "prolificdreamer_s1")
    overrides, phases = bo.window_overrides(row, 8)
    assert "trainer.max_steps=16" in overrides and "camera.height=512" in overrides
    sched = next(o for o in overrides if o.startswith("representation.resolution_schedule="))
    assert sched == "representation.resolution_schedule={resolutions:[64,512],milestones:[0.5]}"
    assert phases == [(0, 5000, 64), (8, 20000, 512)]  # ProlificDreamer: 5000 steps at 64 px, 20000 at 512
    nerf = NeRF(resolution_schedule={"resolutions": [64, 512], "milestones": [0.5]}, run_length=run_length(16))
    assert [nerf.scheduled_resolution(s) for s in range(16)] == [64] * 8 + [512] * 8


def test_extrapolation_counts_startup_each_phases_first_step_and_its_median():
    # launch at 0; step 0 ends at 50 s; 64 px steps take 1 s (one slow 3 s step: the median
    # ignores it), the first 512 px step 20 s (captures), the others 2 s
    durations = [3.0, 1.0, 1.0, 20.0, 2.0, 2.0, 2.0]  # steps 1..7 (window 4: steps 0-3, 4-7)
    stamps, t = {1: 50.0}, 50.0
    for s, d in enumerate(durations, start=1):
        t += d
        stamps[s + 1] = t
    got = bo.extrapolate(stamps, 0.0, [(0, 100, 64), (4, 1000, 512)], window=4)
    assert got["startup_s"] == 50.0
    assert got["object_s"] == pytest.approx(50.0 + 99 * 1.0 + 20.0 + 999 * 2.0)
    assert got["formula"] == "T = startup + (100 - 1) x m_64 + f_512 + (1000 - 1) x m_512"
    assert bo.extrapolate({1: 5.0, 2: 6.0}, 0.0, [(0, 10, 64), (4, 10, 512)], 4)["error"] == \
        "phase 512 px: too few steps logged"


def test_jsonl_timestamps_only_when_asked(tmp_path):
    """+logger.timestamps=true: each metrics.jsonl line holds its wall-clock time (the bench's
    step times); off by default, so logs of the same run stay equal."""
    import json
    import time

    from src.loggers import JSONLLogger

    for on in (False, True):
        run = tmp_path / str(on)
        run.mkdir()
        before = time.time()
        JSONLLogger(run, timestamps=on).log({"loss": 1.0}, 1)
        line = json.loads((run / "metrics.jsonl").read_text())
        assert ("unix_time" in line) == on
        if on:
            assert before <= line["unix_time"] <= time.time()


def test_every_rows_job_passes_the_cli_checks_and_validates(tmp_path):
    """Each (row, mode) job command is accepted as the CLI would accept it: its keys (the bench's
    +logger.timestamps addition among them) pass check_override_keys, and its config composes and
    validates against the random repositories the bench writes (MVDream's UNet beside SD's)."""
    import argparse

    from bench_sd_gpu import write_random_mvdream

    from src.api import compose
    from src.hooks import check_override_keys
    from src.trainer import validate

    repo = write_random_mvdream(tmp_path / "sd", "tiny")
    args = argparse.Namespace(window=2, job_timeout_min=3, repo=str(repo), dtype="float32", device="cpu",
                              compile="none", fast_extra=[], clip=str(bo.write_random_clip(tmp_path / "clip", "tiny")))
    for row in bo.ROWS:
        for mode in bo.MODES:
            cmd = bo.job_command(row, mode, args, tmp_path / "work")
            assert cmd[1:5] == ["-m", "src.train", "-m", "hydra/launcher=submitit_local"]
            overrides = [c for c in cmd[5:] if not c.startswith("hydra.")]
            check_override_keys(overrides)  # exits 2 on a key no config has
            cfg = compose(overrides)
            validate(cfg)
            assert cfg.backbone.name == ("mvdream" if row.backbone == "mvdream" else "diffusers"), row.name
            assert cfg.backbone.fast is (mode == "fast") and cfg.logger.timestamps is True
