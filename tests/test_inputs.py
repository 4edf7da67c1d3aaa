"""Issue 11 item 4: every key is validated before any compute, the message names the key and
what is allowed, and it stays short whatever the value (the issue's examples first, then
inputs invented to break it)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.errors import MissingConfigException

from src.api import compose
from src.trainer import validate

REPO = Path(__file__).resolve().parents[1]
TOY = ["backbone=mog2d", "representation=particles"]
LONG_PROMPT = "dragon " * 1429  # 10,003 characters of words no prior knows
MAX_MESSAGE = 600  # characters: a message, not a dump of the input


@pytest.mark.parametrize("overrides, names", [
    # the examples
    (["representation.lr=-1"], "representation.lr=-1 is invalid: must be >= 0.0"),
    (["representation.lr=nan"], "representation.lr=nan is invalid: must be finite"),
    (["representation.lr=inf"], "representation.lr=inf is invalid: must be finite"),
    (TOY + ["trainer.optimizer=sgd", "representation.lr=-inf"], "representation.lr=-inf is invalid"),
    (["guidance.scale=inf"], "guidance.scale=inf is invalid: must be finite"),
    (["trainer.max_steps=2.5"], "trainer.max_steps=2.5 is invalid: must be an integer"),
    (["trainer.grad_clip=-1"], "trainer.grad_clip=-1 is invalid: must be > 0.0"),
    (["trainer.max_steps=abc"], "trainer.max_steps='abc' is invalid: must be an integer"),
    (["backbone.resolution=0"], "backbone.resolution=0 is invalid: must be >= 8"),
    (["num_threads=-1"], "num_threads=-1 is invalid: must be >= 1"),
    # invented
    (["num_threads=1.5"], "num_threads=1.5 is invalid: must be an integer"),
    (["device=tpu"], "device='tpu' is invalid: allowed: auto, cpu, cuda, cuda:N"),
    (["device=cuda:x"], "device='cuda:x' is invalid"),
    (["seed=0.5"], "seed=0.5 is invalid: must be an integer"),
    (["trainer.checkpoint_every=0"], "trainer.checkpoint_every=0 is invalid: must be >= 1"),
    (["trainer.warmup_steps=-1"], "trainer.warmup_steps=-1 is invalid"),
    (["trainer.grad_clip=nan"], "trainer.grad_clip=nan is invalid: must be finite"),
    (["trainer.step_sleep=-1"], "trainer.step_sleep=-1 is invalid"),
    (["trainer.export=maybe"], "trainer.export='maybe' is invalid: true or false"),
    (["+trainer.max_step=3"], "trainer.max_step: unknown key"),
    (["+lr=0.1"], "lr: unknown key"),
    (["logger=wandb", "logger.wandb.mode=sometimes"], "logger.wandb.mode='sometimes' is invalid"),
    (["logger=wandb", "+logger.wandb.projekt=x"], "logger.wandb.projekt: unknown key"),
    (["+logger.timestamps=sometimes"], "logger.timestamps='sometimes' is invalid"),
    (["representation.checkpoint_chunks=maybe"], "representation.checkpoint_chunks='maybe' is invalid"),
    (["prompt=[a,b]"], "prompt=['a', 'b'] is invalid: a text"),
    (["prompt=a purple dragon"], "unknown words ['purple', 'dragon']"),
    (TOY + ["prompt=dragon"], "outside the mog2d backbone's vocabulary"),
    (["representation=gaussians", "representation.lr_opacities=-2"], "representation.lr_opacities=-2 is invalid"),
    (["representation=gaussians", "representation.n_gaussians=0"], "representation.n_gaussians=0 is invalid"),
    (["guidance=fsd", "guidance.beta=inf"], "guidance.beta=inf is invalid"),
    (["schedule.t_min=0.9", "schedule.t_max=0.1"], "schedule.t_max=0.1 is invalid"),
    (["backbone.resolution=100000"], "backbone.resolution=100000 is invalid: must be >= 8 and <= 256"),
    (["backbone.view_conditioning=sometimes"], "backbone.view_conditioning='sometimes' is invalid"),
    (["backbone.marker_radius=2"], "backbone.marker_radius=2 is invalid: must be > 0.0 and <= 0.9"),
    (["backbone.azimuth_window=0"], "backbone.azimuth_window=0 is invalid: must be > 0.0 and <= 360.0"),
    (["representation.resolution_schedule={resolutions:[32,64],milestones:[0.5,0.7]}"],
     "one milestone fewer than resolutions"),
    (["logger=wandb", "logger.wandb.tags=3"], "logger.wandb.tags=3 is invalid: a list of texts"),
])
def test_bad_values_are_refused_naming_the_key(overrides, names):
    with pytest.raises(ValueError) as err:
        validate(compose(overrides))
    assert names in str(err.value) and len(str(err.value)) < MAX_MESSAGE


@pytest.mark.parametrize("overrides, names", [
    # issue 29: settings that failed only after compute (the export after the whole training, the
    # render size at step 1, the allocator while building)
    (["representation.export.video_resolution=-5"], "representation.export.video_resolution=-5 is invalid: must be >= 8"),
    (["representation.export.video_resolution=0"], "representation.export.video_resolution=0 is invalid"),
    (["representation.export.fps=0"], "representation.export.fps=0 is invalid: must be >= 1"),
    (["representation.export.mesh_resolution=-1"], "representation.export.mesh_resolution=-1 is invalid: must be >= 2"),
    (["+representation.export.formats=[obj]"], "representation.export.formats=['obj'] is invalid: a non-empty list of glb, ply"),
    (["+representation.export.fsp=3"], "representation.export.fsp: unknown key(s); representation.export takes: "),
    (["representation=gaussians", "representation.export.fps=-1"], "representation.export.fps=-1 is invalid"),
    (["camera.height=16"], "camera.height=16 is invalid: ShapesWorld renders are backbone.resolution=32 px square: "
                           "set camera.height=32"),
    (["backbone.resolution=64", "camera.width=32"], "camera.width=32 is invalid"),
    (["representation=image", "representation.height=16"], "representation.height=16 is invalid: ShapesWorld renders"),
    (["guidance=sim", "reward=point", "guidance.reward_weight=1"],
     "reward='point' is invalid: a point reward scores the points of a vector backbone"),
    (TOY + ["reward=point"], "guidance=SDS has no reward term (only guidance=sim"),
    (TOY + ["guidance=sim", "reward=point", "reward.target=[1.0,2.0,3.0]"], "reward.target=[1.0, 2.0, 3.0] is invalid: 2 numbers"),
    (["representation=gaussians", "representation.n_gaussians=100000000000"],
     "representation.n_gaussians=100000000000 is invalid: their parameters, gradients and Adam moments alone take"),
    (["camera.batch_size=100000000000"], "camera.batch_size=100000000000 is invalid: 102400000000000 rays a step"),
    (["backbone.n_azimuths=10000000"], "backbone.n_azimuths=10000000 is invalid: its 640000000 images at 32 px"),
    # typos: the nearest keys
    (["+trainer.max_step=3"], "did you mean trainer.max_steps"),
    (["guidance=esd", "+guidance.lamda=1"], "guidance.lamda: unknown key(s) for ESD; did you mean guidance.lam"),
])
def test_settings_read_late_are_checked_before_compute(overrides, names):
    with pytest.raises(ValueError) as err:
        validate(compose(overrides))
    assert names in str(err.value) and len(str(err.value)) < MAX_MESSAGE


def test_typod_keys_are_answered_with_the_nearest_ones():
    from src.configs import unknown_key, unknown_option
    from src.sweeps import load_sweep

    assert unknown_key("trainer.steps").endswith("did you mean trainer.max_steps or trainer.step_sleep or "
                                                 "trainer.warmup_steps?")
    assert "did you mean guidance.lam " in unknown_key("guidance.lamda")
    for known in ("trainer.max_steps", "guidance.lam", "representation.export.fps", "logger.wandb.mode",
                  "guidance", "experiment", "tuning", "hydra.run.dir", "+trainer.max_steps"):
        assert unknown_key(known) is None, known
    assert unknown_option("guidance", "vsdd").startswith("guidance=vsdd is not an option of guidance: did you "
                                                         "mean guidance=vsd? options: csd, dsd,")
    for group, value in (("guidance", "vsd"), ("tuning", "${backbone}"), ("reward", "null"), ("hydra/launcher", "x")):
        assert unknown_option(group, value) is None, (group, value)
    with pytest.raises(ValueError, match="seeds is not a key of this project's configs; did you mean seed"):
        load_sweep(str(write_sweep("grid:\n  seeds: [0, 1]\n")))


def write_sweep(text: str) -> Path:
    import tempfile

    path = Path(tempfile.mkdtemp()) / "typo.yaml"
    path.write_text(text)
    return path


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_cuda_without_a_gpu_is_refused_before_anything_is_built():
    with pytest.raises(ValueError, match=r"device='cuda' is invalid: no CUDA GPU is visible here"):
        validate(compose(["device=cuda"]))


def test_export_without_a_video_writer_is_refused_before_training(monkeypatch):
    """A GPU machine without imageio-ffmpeg failed 32 runs of a sweep after their 600 steps, at
    the turntable video (2026-12-03): the check now comes before anything is built."""
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # import raises ImportError
    with pytest.raises(ValueError, match=r"trainer.export=true is invalid: the turntable video needs "
                                         r"imageio-ffmpeg.*or trainer.export=false") as err:
        validate(compose([]))
    assert len(str(err.value)) < MAX_MESSAGE
    validate(compose(["trainer.export=false"]))  # nothing to write, nothing to refuse
    validate(compose(TOY))  # the toys write no video


@pytest.mark.parametrize("backbone", [[], TOY])
def test_a_10k_character_prompt_gives_a_short_error(backbone):
    with pytest.raises(ValueError) as err:
        validate(compose(backbone + [f"prompt='{LONG_PROMPT}'"]))
    assert "characters" in str(err.value) and len(str(err.value)) < MAX_MESSAGE


def test_an_unknown_experiment_is_an_error_listing_the_presets():
    """It was silently ignored (``optional``): the default job ran instead of the typo'd toy."""
    with pytest.raises(MissingConfigException, match="experiment/esd_toyy"):
        compose(["experiment=esd_toyy"])


def cli(*args):
    return subprocess.run([sys.executable, "-m", "src.train", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=180)


def test_cli_bad_inputs_exit_cleanly_and_leave_nothing(tmp_path):
    """A file as the run dir, an unknown experiment: a short message, no traceback, no run dir
    left behind (both fail before Python imports torch: this test is quick)."""
    afile = tmp_path / "afile"
    afile.write_text("not a dir")
    out = cli(f"hydra.run.dir={afile}")
    assert out.returncode == 2 and "is a file, not a directory" in out.stderr
    assert "Traceback" not in out.stderr and afile.read_text() == "not a dir"

    run = tmp_path / "run"
    out = cli("experiment=esd_toyy", f"hydra.run.dir={run}")
    assert out.returncode == 2 and "experiment=esd_toyy is not an option of experiment: did you mean " \
                                   "experiment=esd_toy or" in out.stderr
    assert "Traceback" not in out.stderr and not run.exists()
