"""Hydra composition and the errors a user sees before any compute."""

import subprocess
import sys
from pathlib import Path

import pytest

from src.api import compose, train
from src.trainer import ConfigError, validate

REPO = Path(__file__).resolve().parents[1]


def cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "src.train", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def test_groups_compose_with_targets():
    cfg = compose(["guidance=esd", "representation=affine", "backbone=gauss2d"])
    assert cfg.guidance._target_ == "src.guidance.esd.ESD"
    assert cfg.camera._target_ == "src.cameras.GaussianCodeSampler"  # camera follows representation
    assert cfg.prompt == "target"  # the backbone's default prompt
    for group in ("guidance", "representation", "backbone", "reward", "schedule", "camera", "logger"):
        assert group in cfg


def test_experiment_overrides_defaults():
    cfg = compose(["experiment=esd_toy"])
    assert cfg.trainer.max_steps == 2000 and cfg.trainer.warmup_steps == 100
    assert cfg.backbone.name == "gauss2d" and cfg.representation._target_.endswith("Affine")


def test_cfg_job_prints_composed_config():
    out = cli("--cfg", "job", "guidance=ssd")
    assert out.returncode == 0, out.stderr
    assert "src.guidance.ssd.SSD" in out.stdout and "trainer:" in out.stdout


@pytest.mark.parametrize("override, message", [
    ("trainer.max_steps=-5", "trainer.max_steps=-5 is invalid: must be an integer >= 1"),
    ("guidance.scale=0.5", "guidance.scale=0.5 is invalid: must be >= 1"),
    ("guidance.score_model.p_drop=1.5", r"p_drop=1.5 is invalid: a probability in \[0, 1\]"),
    ("trainer.dtype=float16", "allowed: float32, float64"),
])
def test_invalid_values_name_the_key(override, message):
    method = "esd" if "score_model" in override else "sds"
    with pytest.raises(ConfigError, match=message):
        validate(compose([f"guidance={method}", override]))


def test_esd_lambda_out_of_range():
    with pytest.raises(ConfigError, match=r"guidance.lam=2.0 is invalid.*\[0, 1\]"):
        validate(compose(["guidance=esd", "guidance.lam=2.0"]))


def test_representation_backbone_mismatch():
    with pytest.raises(ConfigError, match="cannot be driven by backbone"):
        validate(compose(["backbone=mog2d", "representation=nerf"]))


def test_prompt_outside_vocabulary(tmp_path):
    with pytest.raises(ValueError, match="outside the mog2d backbone's vocabulary"):
        train(compose(["backbone=mog2d", "representation=particles", "prompt=dragon"]), tmp_path)


def test_cli_errors_exit_nonzero_and_leave_no_run_dir(tmp_path):
    run = tmp_path / "run"
    out = cli("guidance=esd", "guidance.lam=3", f"hydra.run.dir={run}")
    assert out.returncode == 2 and "guidance.lam=3" in out.stderr
    assert not run.exists()
    out = cli("guidance=nosuch", f"hydra.run.dir={run}")
    assert out.returncode != 0 and "Available options" in out.stderr and "esd" in out.stderr
