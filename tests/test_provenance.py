"""Where each value came from (src/provenance.py): a run's .hydra/provenance.yaml and
``python -m src.train --cfg job --provenance``."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from src.configs import CONF_DIR
from src.provenance import COMMAND_LINE, _leaves, sources

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}


def where(overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return cfg, sources(cfg, overrides)


@pytest.mark.parametrize("overrides, expected", [
    ([], {"trainer.max_steps": "conf/tuning/shapes.yaml", "trainer.dtype": "conf/config.yaml",
          "guidance.scale": "conf/tuning/shapes.yaml", "guidance._target_": "conf/guidance/sds.yaml",
          "camera._target_": "conf/camera/orbit.yaml", "score_model.lr": "conf/score_model/unet.yaml",
          "prompt": "conf/config.yaml", "camera.height": "conf/tuning/camera/shapes_orbit.yaml",
          "camera.n_eval_views": "conf/camera/orbit.yaml"}),
    (["backbone=sd21"], {"camera.height": "conf/camera/orbit.yaml", "backbone.path": "conf/backbone/sd21.yaml"}),
    (["representation=image"], {"camera.elevation_deg": "conf/tuning/camera/shapes_image.yaml"}),
    (["guidance=esd"], {"guidance.lam": "conf/guidance/esd.yaml", "guidance.scale": "conf/tuning/shapes.yaml"}),
    (["guidance=esd", "guidance.lam=1", "seed=3"], {"guidance.lam": COMMAND_LINE, "seed": COMMAND_LINE}),
    (["experiment=shapes_modes", "guidance=sim"],
     {"prompt": "conf/experiment/shapes_modes.yaml", "guidance.vsd_after": "conf/tuning/method/shapes_sim.yaml",
      "guidance.huber_c": "conf/guidance/sim.yaml", "schedule._target_": "conf/schedule/anneal.yaml"}),
    (["guidance=fsd", "schedule=dreamtime"], {"schedule._target_": "conf/schedule/dreamtime.yaml"}),
    (["experiment=esd_toy"], {"trainer.max_steps": "conf/experiment/esd_toy.yaml", "backbone._target_": "conf/backbone/gauss2d.yaml"}),
    (["~tuning"], {"trainer.max_steps": "conf/config.yaml"}),
    # a file's null replaced by a dict from the command line: its leaves are the command line's
    (["representation.resolution_schedule={resolutions:[32,32],milestones:[0.5]}"],
     {"representation.resolution_schedule.resolutions": COMMAND_LINE,
      "representation.resolution_schedule.milestones": COMMAND_LINE}),
])
def test_each_key_is_traced_to_the_file_or_the_command_line_that_set_it(overrides, expected):
    cfg, found = where(overrides)
    assert {k: found.get(k) for k in expected} == expected
    # every leaf of the run's config has a source, and nothing else does
    assert set(found) == set(_leaves(OmegaConf.to_container(cfg, resolve=False)))


def test_a_file_named_as_a_source_sets_that_value():
    """For every leaf: the named file holds the composed value at that key (its package's)."""
    cfg, found = where(["experiment=shapes_modes", "guidance=sim", "representation=gaussians"])
    values = _leaves(OmegaConf.to_container(cfg, resolve=False))
    for key, source in found.items():
        text = (REPO / source).read_text()
        group = source[len("conf/"):].rpartition("/")[0].replace("/", ".")
        package = "" if source == "conf/config.yaml" or "@package _global_" in text else f"{group}."
        assert key.startswith(package), (key, source)
        in_file = _leaves(OmegaConf.to_container(OmegaConf.load(REPO / source), resolve=False))
        assert in_file[key[len(package):]] == values[key], (key, source)


def run(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "src.train", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=300)


def test_cfg_job_provenance_prints_the_job_config_with_each_source():
    overrides = ["guidance=esd", "guidance.lam=2"]
    plain = run("--cfg", "job", *overrides)
    annotated = run("--cfg", "job", "--provenance", *overrides)
    assert plain.returncode == 0 and annotated.returncode == 0, annotated.stderr
    assert "  lam: 2  # command line\n" in annotated.stdout
    assert "  max_steps: 600  # conf/tuning/shapes.yaml\n" in annotated.stdout
    assert "  _target_: src.guidance.esd.ESD  # conf/guidance/esd.yaml\n" in annotated.stdout
    assert re.sub(r"  # [^\n]*", "", annotated.stdout) == plain.stdout  # --cfg job's text, annotated
    bad = run("--cfg", "job", "--provenance", "guidance=nope")
    assert bad.returncode == 2 and "Could not find 'guidance/nope'" in bad.stderr


def test_a_run_writes_where_each_of_its_values_came_from(tmp_path):
    out = run("backbone=mog2d", "representation=particles", "representation.n_particles=4", "guidance=esd",
              "trainer.max_steps=2", "trainer.progress=false", "num_threads=1", "device=cpu",
              f"hydra.run.dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    written = yaml.safe_load((tmp_path / ".hydra" / "provenance.yaml").read_text())
    assert written["trainer.max_steps"] == COMMAND_LINE and written["representation.n_particles"] == COMMAND_LINE
    assert written["guidance.lam"] == "conf/guidance/esd.yaml"
    assert written["trainer.dtype"] == "conf/config.yaml"
    config = OmegaConf.load(tmp_path / ".hydra" / "config.yaml")
    assert set(written) == set(_leaves(OmegaConf.to_container(config, resolve=False)))
