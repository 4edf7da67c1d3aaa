"""Sweeps: sweep files -> one Hydra multirun, launcher configs (fast, CPU); the report: test_report.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from src import sweeps
from src.sweeps import Sweep, hydra_value, load_sweep, multirun_args

# conf/hydra/launcher/submitit_local.yaml shares its name with the plugin's schema (on purpose).
pytestmark = pytest.mark.filterwarnings("ignore:(?s).*automatic_schema_matching:UserWarning")
REPO = Path(__file__).resolve().parents[1]
STUDIES = ("esd_lambda", "fsd_beta", "ssd_threshold", "dive3d_gamma_lambda", "diversity_benchmark", "shapes_ldm")
TOY_STEPS = 5


# -- sweep files and grid expansion ----------------------------------------------------------


@pytest.mark.parametrize("name", STUDIES)
def test_every_study_loads_real_and_toy(name):
    real, toy = load_sweep(name), load_sweep(name, toy=True)
    assert real.size >= 4 and toy.size >= 2
    assert sweeps.SEED_KEY in real.grid and len(real.grid[sweeps.SEED_KEY]) >= 3
    assert real.overrides.get("logger") == "wandb"  # cluster runs are grouped in W&B
    assert len(real.points()) == real.size


def test_grid_expansion_is_the_product_in_order():
    s = Sweep("x", {}, {"guidance.lam": [0.0, 1.0], "seed": [0, 1, 2]})
    assert s.size == 6
    assert s.points()[:4] == [
        {"guidance.lam": 0.0, "seed": 0},
        {"guidance.lam": 0.0, "seed": 1},
        {"guidance.lam": 0.0, "seed": 2},
        {"guidance.lam": 1.0, "seed": 0},
    ]


def test_toy_section_replaces_overrides_and_updates_grid():
    s = load_sweep("dive3d_gamma_lambda", toy=True)
    study = load_sweep("dive3d_gamma_lambda")
    assert study.overrides["reward"] == "pickscore" and study.overrides["backbone"] == "sd21"
    assert s.overrides["backbone"] == "mog2d" and s.overrides["reward"] == "point"  # replaced
    assert s.grid["guidance.reward_weight"] == [0.0, 2.0]
    assert s.grid[sweeps.SEED_KEY] == load_sweep("dive3d_gamma_lambda").grid[sweeps.SEED_KEY]


def test_bad_sweep_files_are_rejected(tmp_path):
    def write(spec):
        p = tmp_path / "s.yaml"
        p.write_text(yaml.safe_dump(spec))
        return str(p)

    with pytest.raises(ValueError, match="both fixed and swept"):
        load_sweep(write({"overrides": {"seed": 0}, "grid": {"seed": [0, 1]}}))
    with pytest.raises(ValueError, match="non-empty list"):
        load_sweep(write({"grid": {"seed": 3}}))
    with pytest.raises(ValueError, match="unknown keys"):
        load_sweep(write({"gird": {}}))
    with pytest.raises(ValueError, match="grids must be a non-empty list"):
        load_sweep(write({"grids": {}}))
    with pytest.raises(ValueError, match="either grid .* or grids"):
        load_sweep(write({"grid": {"seed": [0]}, "grids": [{"seed": [1]}]}))
    with pytest.raises(ValueError, match="occurs twice"):
        load_sweep(write({"grids": [{"seed": [0, 1]}, {"seed": [1, 2]}]}))
    with pytest.raises(FileNotFoundError, match="esd_lambda"):  # lists the known sweeps
        load_sweep("no_such_sweep")
    bad = tmp_path / "bad.yaml"
    for text, reason in [("grid:\n  seed: [0, 1\n", "not valid YAML"),  # unclosed list
                         ("- seed\n", "must be a mapping"), ("grid: [seed]\n", "grid must be a mapping")]:
        bad.write_text(text)
        with pytest.raises(ValueError, match=reason) as err:
            load_sweep(str(bad))
        assert str(bad) in str(err.value) and "<unicode string>" not in str(err.value)


def test_hydra_values_are_quoted_only_when_needed():
    assert hydra_value(0.5) == "0.5" and hydra_value(3) == "3" and hydra_value(True) == "true"
    assert hydra_value(None) == "null" and hydra_value("sd21") == "sd21"
    assert hydra_value("a red cube") == "'a red cube'"
    assert hydra_value("it's") == "'it\\'s'"
    assert hydra_value(["a", "b c"]) == "[a,'b c']"
    assert hydra_value({"side": 0.0, "back": 0.5}) == "{side:0.0,back:0.5}"


def test_command_line_overrides_are_read_with_hydras_grammar():
    """`scripts/sweep.py NAME "backbone.view_adherence={side:0.0,back:0.0}"` reaches every run as
    that dict (YAML would read {side:0.0} as the key 'side:0.0'; on 2026-12-03 every point of a
    GPU sweep was refused with "must be a number"); sweeps on the command line are refused."""
    from src.api import compose
    from src.sweeps import invalid_points, override_value, point_overrides

    s = load_sweep("shapes_janus", toy=True)
    for text in ("backbone.view_adherence={side:0.0,back:0.0}", "backbone.light_dir=[0,0,1]"):
        s.overrides[text.split("=")[0]] = override_value(text)
    points = point_overrides(s)
    assert "backbone.view_adherence={side:0.0,back:0.0}" in points[0] and "backbone.light_dir=[0,0,1]" in points[0]
    assert invalid_points(points[:1], compose) == []
    cfg = compose(points[0])
    assert dict(cfg.backbone.view_adherence) == {"side": 0.0, "back": 0.0} and list(cfg.backbone.light_dir) == [0, 0, 1]
    assert override_value("prompt='a red cube'") == "a red cube" and override_value("x=") == ""
    with pytest.raises(ValueError, match="put it in the sweep file's grid"):
        override_value("seed=0,1")
    with pytest.raises(ValueError, match="is not a Hydra override"):
        override_value("x=[1,")


def test_multirun_args_one_command_with_group_and_short_run_dirs(tmp_path):
    s = load_sweep("esd_lambda")
    args = multirun_args(s, "slurm_a100", tmp_path, ["hydra.launcher.partition=gpu"])
    assert args[0] == "-m"
    assert "guidance.lam=0.0,0.25,0.5,0.75,1.0" in args and "seed=0,1,2,3" in args
    assert "logger.wandb.group=esd_lambda" in args
    assert "hydra/launcher=slurm_a100" in args and f"hydra.sweep.dir={tmp_path}" in args
    exclude = next(
        a for a in args if a.startswith("hydra.job.config.override_dirname.exclude_keys=")
    )
    # fixed overrides stay out of the run-dir names; swept ones are in them
    assert "trainer.max_steps" in exclude and "prompt" in exclude and "guidance.lam" not in exclude
    with pytest.raises(ValueError, match="launcher"):
        multirun_args(s, "nope", tmp_path)
    # a swept experiment names the run dirs (conf/config.yaml leaves a fixed one out of them)
    mv = next(a for a in multirun_args(load_sweep("shapes_multiview"), "basic", tmp_path)
              if a.startswith("hydra.job.config.override_dirname.exclude_keys="))
    assert "experiment" not in mv.split("=", 1)[1].strip("[]").split(",") and "representation" in mv
    assert "experiment" in exclude.split("=", 1)[1].strip("[]").split(",")


def test_no_wandb_group_without_wandb_logger(tmp_path):
    args = multirun_args(load_sweep("esd_lambda", toy=True), "basic", tmp_path)
    assert not any(a.startswith("logger.wandb.group") for a in args)


def test_sweep_dir_refuses_other_fixed_overrides_once_a_run_started(tmp_path):
    s = Sweep("x", {"trainer.max_steps": 300}, {"seed": [0, 1]})
    sweeps.record_spec(s, tmp_path, "basic")
    sweeps.record_spec(
        Sweep("x", {"trainer.max_steps": 300}, {"seed": [2]}), tmp_path, "slurm_a100"
    )
    assert yaml.safe_load((tmp_path / "sweep.yaml").read_text())["grid"]["seed"] == [2]
    # no run started under the recorded settings (e.g. the sweep failed on a typo): the
    # corrected file takes the directory over
    sweeps.record_spec(Sweep("x", {"trainer.max_steps": 400}, {"seed": [0]}), tmp_path, "basic")
    assert yaml.safe_load((tmp_path / "sweep.yaml").read_text())["overrides"] == {"trainer.max_steps": 400}
    (tmp_path / "seed=0").mkdir()
    (tmp_path / "seed=0" / "metrics.jsonl").write_text('{"step": 10}\n')  # a run started
    with pytest.raises(ValueError, match="other fixed overrides"):
        sweeps.record_spec(Sweep("x", {"trainer.max_steps": 999}, {"seed": [0]}), tmp_path, "basic")


# -- launcher configs ------------------------------------------------------------------------


def _launcher(launcher: str, *overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            "config", overrides=[f"hydra/launcher={launcher}", *overrides], return_hydra_config=True
        )
    return cfg.hydra.launcher


def test_slurm_launcher_composes_with_env_and_overrides(monkeypatch):
    monkeypatch.setenv("SBATCH_PARTITION", "gpu_a100")
    monkeypatch.setenv("SBATCH_ACCOUNT", "lab42")
    monkeypatch.setenv("DISTILLERY_SLURM_TIMEOUT_MIN", "240")
    monkeypatch.delenv("SBATCH_QOS", raising=False)
    la = _launcher(
        "slurm_a100",
        "hydra.launcher.constraint=a100_80gb",
        "hydra.launcher.setup=[module load cuda,source .venv/bin/activate]",
    )
    assert la._target_ == "hydra_plugins.distillery_launchers.launchers.SlurmLauncher"
    assert la.gpus_per_node == 1 and la.tasks_per_node == 1
    assert la.partition == "gpu_a100" and la.account == "lab42" and la.qos is None
    assert la.timeout_min == 240 and isinstance(la.timeout_min, int)
    assert la.constraint == "a100_80gb"
    assert la.max_num_timeout > 0 and la.array_parallelism > 0
    assert list(la.setup) == ["module load cuda", "source .venv/bin/activate"]


def test_slurm_launcher_defaults_without_env(monkeypatch):
    for var in (
        "SBATCH_PARTITION",
        "SBATCH_ACCOUNT",
        "SBATCH_QOS",
        "SBATCH_CONSTRAINT",
        "DISTILLERY_SLURM_TIMEOUT_MIN",
        "DISTILLERY_SLURM_SETUP",
    ):
        monkeypatch.delenv(var, raising=False)
    la = _launcher("slurm_a100")
    assert la.partition is None and la.account is None and la.timeout_min == 1440
    assert list(la.setup) == ["true"]


def test_local_launcher_composes():
    la = _launcher("submitit_local")
    assert la._target_ == "hydra_plugins.distillery_launchers.launchers.LocalLauncher"
    assert "%j" in la.submitit_folder


def _visible_devices():
    return os.environ.get("CUDA_VISIBLE_DEVICES")


@pytest.mark.parametrize("parent, expected", [("3,5", "3,5"), ("", "")])
def test_local_jobs_see_the_gpus_of_the_submitting_process(tmp_path, monkeypatch, parent, expected):
    """submitit's local executor sets CUDA_VISIBLE_DEVICES to its first gpus_per_node GPUs ("" for
    0: on a GPU machine every job ran on the CPU). gpus_per_node: null passes this process's GPUs
    through; a real submitit job reports what it sees."""
    import submitit

    from hydra_plugins.distillery_launchers.launchers import local_gpus

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", parent)
    gpus = local_gpus()
    assert gpus == [int(p) for p in parent.split(",") if p]
    executor = submitit.LocalExecutor(folder=tmp_path / "%j")
    executor.update_parameters(timeout_min=2, gpus_per_node=len(gpus), visible_gpus=gpus)
    assert executor.submit(_visible_devices).result() == expected
    assert OmegaConf.load(REPO / "conf" / "hydra" / "launcher" / "submitit_local.yaml").gpus_per_node is None


def test_every_job_of_a_sweep_shares_one_compile_cache(tmp_path, monkeypatch):
    """Issue 31: torch.compile's cache lives in the sweep dir (a second job loads what the first
    compiled); a cache dir already in the environment wins."""
    from hydra_plugins.distillery_launchers import launchers

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    assert launchers.use_compile_cache(tmp_path) == tmp_path / ".compile_cache"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / ".compile_cache")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/elsewhere")
    assert launchers.use_compile_cache(tmp_path) == Path("/elsewhere")


def test_local_jobs_get_one_gpu_each_round_robin(tmp_path, monkeypatch):
    """Issue 30 item 4: 4 local jobs on a machine with 2 (fake) GPUs see CUDA_VISIBLE_DEVICES
    0, 1, 0, 1 (real submitit jobs report what they see); k GPUs per job take the next k."""
    import submitit

    from hydra_plugins.distillery_launchers.launchers import gpus_of_job, local_gpus, submit_local

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    executor = submitit.LocalExecutor(folder=tmp_path / "%j")
    executor.update_parameters(timeout_min=2)
    jobs = submit_local(executor, _visible_devices, [()] * 4, local_gpus(), per_job=1)
    assert [job.result() for job in jobs] == ["0", "1", "0", "1"]
    assert [gpus_of_job(i, [3, 5, 7], 2) for i in range(3)] == [[3, 5], [7, 3], [5, 7]]
    assert gpus_of_job(4, [], 1) == [] and gpus_of_job(4, [3, 5], 0) == []  # CPU only
    with pytest.raises(ValueError, match="gpus_per_node=3, but this machine shows 2 GPUs"):
        gpus_of_job(0, [0, 1], 3)


def test_launcher_classes_are_hydra_plugins():
    from hydra.core.plugins import Plugins
    from hydra.plugins.launcher import Launcher

    names = {f"{c.__module__}.{c.__name__}" for c in Plugins.instance().discover(Launcher)}
    assert "hydra_plugins.distillery_launchers.launchers.SlurmLauncher" in names
    assert "hydra_plugins.distillery_launchers.launchers.LocalLauncher" in names


def test_slurm_sbatch_script_has_the_requested_resources(tmp_path, monkeypatch):
    """The executor the launcher builds writes these sbatch flags (no submission, no Slurm
    needed: submitit's availability probe, ``shutil.which("srun")``, is answered here, so the
    default suite passes on a machine without slurm-wlm; tests/test_slurm.py submits for real)."""
    from submitit.slurm.slurm import SlurmExecutor

    from hydra_plugins.distillery_launchers.launchers import SlurmLauncher

    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 2))

    params = dict(
        submitit_folder=str(tmp_path / "%j"),
        timeout_min=90,
        cpus_per_task=8,
        gpus_per_node=1,
        tasks_per_node=1,
        mem_gb=64,
        nodes=1,
        name="distillery",
        stderr_to_stdout=False,
        partition="gpu",
        account="lab",
        qos="normal",
        constraint="a100",
        comment=None,
        exclude=None,
        gres=None,
        cpus_per_gpu=None,
        gpus_per_task=None,
        mem_per_gpu=None,
        mem_per_cpu=None,
        signal_delay_s=120,
        max_num_timeout=20,
        additional_parameters={},
        array_parallelism=8,
        setup=["module load cuda"],
    )
    executor = SlurmLauncher(**params)._executor()[0]._executor  # AutoExecutor -> SlurmExecutor
    text = executor._make_submission_file_text("python job.py", "uid")
    for flag in (
        "--partition=gpu",
        "--account=lab",
        "--qos=normal",
        "--constraint=a100",
        "--gpus-per-node=1",
        "--cpus-per-task=8",
        "--mem=64GB",
        "--time=90",
        "--signal=USR2@120",
    ):
        assert flag in text, flag
    assert "module load cuda" in text
    assert executor.max_num_timeout == 20


# -- end to end, in-process launcher ---------------------------------------------------------


@pytest.mark.slow
def test_toy_sweep_runs_one_dir_per_point_and_reports(tmp_path, capsys):
    spec = {
        "overrides": {
            "backbone": "mog2d",
            "representation": "particles",
            "guidance": "sds",
            "trainer.progress": False,
            "trainer.export": False,
        },
        "grid": {"trainer.max_steps": [TOY_STEPS], "seed": [0, 1]},
    }
    sweep_dir = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "scripts" / "sweep.py"), str(tmp_path / "tiny.yaml"),
           "--launcher", "basic", "--sweep-dir", str(sweep_dir)]
    # a typo in a fixed override and one bad grid value: every invalid point is listed, nothing
    # is recorded or launched (the script's main in-process: it refuses before it starts any
    # process; its refusals as a process: tests/test_filesystem.py)...
    from scripts.sweep import main

    typo = {**spec, "overrides": {**spec["overrides"], "guidance.scale": -1.0}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(typo))
    assert main(cmd[2:]) == 2
    err = capsys.readouterr().err
    assert "2 of 2 grid points are invalid" in err
    assert "guidance.scale=-1.0 is invalid" in err and "Traceback" not in err
    assert not sweep_dir.exists()
    # ...and the corrected file runs in the same directory
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(spec))
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    runs = sorted(p.name for p in sweep_dir.iterdir() if (p / "metrics.json").exists())
    assert runs == [f"seed={s},trainer.max_steps={TOY_STEPS}" for s in (0, 1)]
    assert (sweep_dir / "report.md").exists() and (sweep_dir / "report.csv").exists()
    cfg = OmegaConf.load(sweep_dir / runs[0] / ".hydra" / "config.yaml")
    assert cfg.seed == 0 and cfg.trainer.max_steps == TOY_STEPS  # swept values are in the config


@pytest.mark.slow
def test_local_launcher_reports_failures_and_skips_finished_runs(tmp_path, monkeypatch, capfd):
    """submitit_local: a run that fails (here: diverges) is reported with its log and the other
    runs still run; a resubmission skips finished and diverged runs, and lists the latter.
    scripts/sweep.py's main runs in-process (its multirun and the jobs are processes, as from the
    command line; the script as a process: test_toy_sweep_runs_one_dir_per_point_and_reports)."""
    from scripts.sweep import main

    spec = {
        "overrides": {
            "backbone": "mog2d",
            "representation": "particles",
            "guidance": "sds",
            "trainer.max_steps": TOY_STEPS,
            "trainer.progress": False,
            "trainer.export": False,
            "trainer.optimizer": "sgd",
        },
        "grid": {"representation.lr": [0.01, 1e20]},
    }  # lr 1e20 overflows float32 at step 2
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(spec))
    sweep_dir = tmp_path / "out"
    args = [str(tmp_path / "tiny.yaml"), "--launcher", "submitit_local", "--sweep-dir", str(sweep_dir)]
    monkeypatch.setenv("DISTILLERY_LOCAL_PARALLELISM", "2")
    assert main(args) != 0
    capfd.readouterr()
    failed = (sweep_dir / "failed.txt").read_text()
    assert "representation.lr=1e+20" in failed and "representation.lr=0.01" not in failed
    assert "diverged at step 2" in failed
    log = Path(failed.split("log: ")[1].split()[0])
    assert log.exists() and "diverged at step 2" in log.read_text()  # the log holds the reason
    good = json.loads((sweep_dir / "representation.lr=0.01" / "metrics.json").read_text())
    bad = json.loads((sweep_dir / "representation.lr=1e+20" / "metrics.json").read_text())
    assert good["status"] == "finished" and bad["status"] == "diverged"
    report = (sweep_dir / "report.md").read_text()
    assert "Failed jobs" in report and "representation.lr=1e+20" in report

    second = main(args)
    out = "".join(capfd.readouterr())
    assert "skip, finished" in out
    assert "skip, diverged" in out
    assert second != 0  # the bad run is still bad, and still reported
    assert "diverged at step 2" in (sweep_dir / "failed.txt").read_text()


def test_wandb_group_override_composes():
    """What the studies pass: logger=wandb plus the group (logger.wandb.group)."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["logger=wandb", "logger.wandb.group=esd_lambda"])
    assert cfg.logger.wandb.group == "esd_lambda" and cfg.logger.wandb.mode == "offline"


def test_multirun_validates_every_point_before_launching_any(tmp_path):
    """`python -m src.train -m` (any launcher): all invalid points listed, none launched."""
    sweep_dir = tmp_path / "m"
    out = subprocess.run(
        [sys.executable, "-m", "src.train", "-m", "backbone=mog2d", "representation=particles",
         "trainer.max_steps=2", "guidance.scale=7.5,-1,0", "seed=0,1", f"hydra.sweep.dir={sweep_dir}"],
        capture_output=True, text=True, cwd=REPO, timeout=180,
    )
    assert out.returncode == 2 and "4 of 6 grid points are invalid; nothing was launched" in out.stderr
    assert "at guidance.scale=-1 seed=1" in out.stderr and "guidance.scale=0 is invalid" in out.stderr
    assert "Traceback" not in out.stderr
    assert not [p for p in sweep_dir.iterdir() if p.is_dir()]  # no run dir


def load_sweep_spec(name: str) -> dict:
    return yaml.safe_load(sweeps.sweep_path(name).read_text()) or {}


def test_documented_report_dirs_are_where_the_sweeps_write():
    """README / docs/sweeps.md: each `make report SWEEP_DIR=...` is a dir `make sweep` writes."""
    import re

    names = [f.stem for f in sweeps.SWEEPS_DIR.glob("*.yaml")]  # every sweep file, its study and toy
    written = {str(sweeps.default_sweep_dir(load_sweep(name, toy=toy), toy))
               for name in names for toy in (False, True) if toy is False or "toy" in load_sweep_spec(name)}
    for doc in ("README.md", "docs/sweeps.md"):
        dirs = re.findall(r"make report SWEEP_DIR=(multirun/\S+)", (REPO / doc).read_text())
        assert dirs and set(dirs) <= written, (doc, dirs)


REQUEUE_PROBE = """
import logging, subprocess, sys
logging.basicConfig(level=logging.INFO)
from submitit.slurm.slurm import SlurmJobEnvironment
from hydra_plugins.distillery_launchers.launchers import tolerate_requeue_race
tolerate_requeue_race(); tolerate_requeue_race()  # idempotent
try:
    SlurmJobEnvironment()._requeue(3)
except subprocess.CalledProcessError as e:
    print("raised", e.returncode); sys.exit(0)
print("requeued")
"""


@pytest.mark.parametrize(
    "scontrol, expected",
    [
        ("kill -TERM $$", "requeued"),  # killed by the job's own requeue: done
        ("exit 0", "requeued"),
        ("exit 1", "raised 1"),  # a real failure still fails the job
        ("kill -KILL $$", "raised -9"),
    ],
)
def test_scontrol_requeue_killed_by_the_requeue_counts_as_requeued(tmp_path, scontrol, expected):
    """`scontrol requeue` runs inside the job it requeues; Slurm's SIGTERM to the job can stop it
    before it exits (CI: a requeued run reported failed). A real `scontrol` stand-in, run by
    submitit's own requeue in a real job-like process."""
    fake = tmp_path / "scontrol"
    fake.write_text(f"#!/bin/sh\n{scontrol}\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "SLURM_JOB_ID": "42",
           "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", REQUEUE_PROBE], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == expected
    if scontrol.startswith("kill -TERM"):
        assert "stopped by SIGTERM, the job's own requeue" in out.stderr


def test_a_sweep_of_several_grids_runs_their_union_as_one_multirun_each(tmp_path):
    """sweeps/toy_claims.yaml: four grids (methods with different knobs) into one sweep dir; the
    record lists every swept key (the report's columns) and each grid."""
    s = load_sweep("toy_claims")
    n_methods = len(sweeps.options("guidance"))
    assert s.size == 2 * 2 + 4 * 2 + 2 * 2 + n_methods * 2 == len(s.points())
    assert {"seed": 0, "experiment": "ssd_toy", "guidance": "ssd", "guidance.terms": "seeking"} in s.points()
    runs = sweeps.multiruns(s, "basic", tmp_path)
    assert len(runs) == 4 and all(f"hydra.sweep.dir={tmp_path}" in a for a in runs)
    assert "guidance.lam=0.25,0.5,0.75,1.0" in runs[1] and not any(a.startswith("guidance.lam") for a in runs[0])
    # the experiment is swept, so it names the run dirs: SDS on esd_toy and on mog_diversity differ
    assert all("experiment" not in a for r in runs for a in r if "exclude_keys" in a)
    with pytest.raises(ValueError, match="4 grids"):
        multirun_args(s, "basic", tmp_path)
    sweeps.record_spec(s, tmp_path, "basic")
    record = yaml.safe_load((tmp_path / "sweep.yaml").read_text())
    assert len(record["grids"]) == 4 and record["grid"]["guidance"][:3] == ["sds", "vsd", "esd"]
