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
    assert saved == metrics and saved.pop("status") == "finished"
    assert all(isinstance(v, (int, float)) for v in saved.values())  # the rest: name -> number
    assert {"mode_coverage", "precision", "final_loss", "steps"} <= saved.keys()
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["seed"] == 0 and info["versions"]["torch"] == torch.__version__.split("+")[0]
    assert "commit" in info["git"]
    assert info["device"] == "cpu" and info["threads"] == torch.get_num_threads()  # which machine made it
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


def test_validation_grid_is_labelled_readable_and_renders_only_its_views(tmp_path, monkeypatch):
    """Issue 30 item 6: VAL_VIEWS of the 24 evaluation views (every 45 degrees; only those are
    rendered, as previews), each 32 px render enlarged to a 128 px tile, its azimuth under it,
    the step above."""
    import imageio.v2 as imageio
    import numpy as np

    import src.export.video as video

    rendered = []
    original = video.render_frames
    monkeypatch.setattr(video, "render_frames", lambda rep, v, preview=False: rendered.append(
        (v.azimuth_deg.tolist(), preview)) or original(rep, v, preview=preview))
    overrides = ["trainer.max_steps=2", "trainer.val_every=1", "trainer.export=false",
                 "representation.n_samples=8", "representation.grid.n_levels=2"]
    cfg = compose(overrides)
    assert cfg.camera.height == 32 and cfg.camera.n_eval_views == 24
    train(cfg, tmp_path)
    assert rendered == [([0.0, 45.0, 90.0, 135.0, 180.0, -135.0, -90.0, -45.0], True)] * 2  # steps 1, 2
    grid = imageio.imread(tmp_path / "val" / "step_000001.png")
    line, tile = video.LABEL_PX + 6, 128
    assert grid.shape == (line + tile + line, 8 * (tile + 4) - 4, 3)
    title, labels = grid[:line], grid[line + tile:]
    assert (title < 128).any() and all((labels[:, c * (tile + 4): c * (tile + 4) + tile] < 128).any() for c in range(8))
    tiles = grid[line:line + tile, :tile]  # nearest-neighbour 4x: blocks of 4 x 4 equal pixels
    assert np.array_equal(tiles, np.repeat(np.repeat(tiles[::4, ::4], 4, 0), 4, 1))


# --- a run never lies (issue 11): divergence, ownership, recovery, extension ---------------------
def strict_json(path: Path) -> dict:
    """json.loads that refuses NaN / Infinity, as a strict reader (e.g. JavaScript) would."""
    def refuse(name):
        raise ValueError(f"{path}: {name} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def checkpoint_step_and_finite(run_dir: Path) -> tuple[int, bool]:
    state = torch.load(run_dir / CHECKPOINT, weights_only=False)
    tensors = [v for v in state["representation"].values() if torch.is_tensor(v)]
    return state["step"], all(bool(torch.isfinite(t).all()) for t in tensors)


def inject(monkeypatch, at: int, fault):
    """Run ``fault(trainer)`` before train_step(at) (and undo hooks it returns after it)."""
    original = Trainer.train_step

    def step(self, k):
        undo = fault(self) if k == at else None
        try:
            return original(self, k)
        finally:
            if undo is not None:
                undo.remove()

    monkeypatch.setattr(Trainer, "train_step", step)


def _inf_gradient(trainer):
    p = next(trainer.c.representation.parameters())
    return p.register_hook(lambda g: torch.full_like(g, float("inf")))


def _inf_learning_rate(trainer):
    for group in trainer.optimizer.param_groups:
        group["lr"] = float("inf")


@pytest.mark.parametrize("kind", ["loss", "gradient", "parameters"])
def test_divergence_stops_at_that_step_and_keeps_the_good_checkpoint(tmp_path, monkeypatch, kind):
    """Issue 11 item 1: a non-finite loss (sgd at lr 1e20 overflows), gradient or parameter
    stops the run at that step, names it and the last good checkpoint, and metrics.json is
    strict JSON with status "diverged"; the checkpoint on disk stays the last good one."""
    from src.trainer import Diverged

    overrides = TOY + ["guidance=sds"]
    if kind == "loss":
        overrides += ["trainer.optimizer=sgd", "representation.lr=1e20", "trainer.dtype=float32",
                      "trainer.checkpoint_every=1"]
    else:
        inject(monkeypatch, 24, _inf_gradient if kind == "gradient" else _inf_learning_rate)
    with pytest.raises(Diverged) as err:
        train(compose(overrides), tmp_path)
    saved = strict_json(tmp_path / "metrics.json")
    assert saved["status"] == "diverged" and saved["failed_step"] == err.value.step
    assert f"non-finite {kind if kind != 'parameters' else 'parameters'}" in saved["error"]
    assert f"diverged at step {err.value.step}" in saved["error"] and str(tmp_path / CHECKPOINT) in saved["error"]
    step, finite = checkpoint_step_and_finite(tmp_path)
    assert finite and step == saved["last_good_step"]
    if kind != "loss":
        assert (err.value.step, step) == (25, 20)
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["attempts"][-1]["status"] == "diverged"


def test_a_non_finite_state_is_never_checkpointed(tmp_path):
    from src.trainer import NonFinite

    _, trainer = train(compose(TOY + ["guidance=sds", "trainer.max_steps=10"]), tmp_path)
    before = (tmp_path / CHECKPOINT).read_bytes()
    with torch.no_grad():
        next(trainer.c.representation.parameters()).fill_(float("nan"))
    with pytest.raises(NonFinite):
        trainer.save()
    assert (tmp_path / CHECKPOINT).read_bytes() == before


def test_sigint_checkpoints_the_step_and_the_rerun_resumes_identically(tmp_path, monkeypatch):
    """Issue 11 item 3: SIGINT (SIGTERM in tests/test_faults.py) ends the step, writes a
    checkpoint there (not at a checkpoint_every multiple) and stops; the rerun is exact."""
    from src.trainer import Interrupted

    cfg = compose(TOY + ["guidance=vsd"])
    m_ref, ref = train(cfg, tmp_path / "ref")
    original = Trainer.train_step

    def step(self, k):
        logs = original(self, k)
        if k == 14:
            os.kill(os.getpid(), signal.SIGINT)
        return logs

    monkeypatch.setattr(Trainer, "train_step", step)
    # a shell starts background jobs with SIGINT ignored, which StopSignals leaves alone (as it
    # should): give this process the default handler, whatever launched pytest
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(Interrupted) as err:
            train(cfg, tmp_path / "run")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert err.value.exit_code == 128 + signal.SIGINT
    assert checkpoint_step_and_finite(tmp_path / "run") == (15, True)
    monkeypatch.setattr(Trainer, "train_step", original)
    m_res, res = train(cfg, tmp_path / "run")
    for k, v in params(ref).items():
        assert torch.equal(v, params(res)[k])
    attempts = json.loads((tmp_path / "run" / "run_info.json").read_text())["attempts"]
    assert [a["status"] for a in attempts] == ["interrupted", "finished"]
    assert attempts[1]["resumed_from_step"] == 15


def test_missing_final_metrics_are_recomputed_from_the_checkpoint(tmp_path):
    """Killed after the final checkpoint, before metrics.json (here: metrics.json deleted, which
    leaves the same files): the rerun evaluates the checkpoint, it does not report NaN / 0."""
    cfg = compose(TOY + ["guidance=sds"])
    first, _ = train(cfg, tmp_path)
    (tmp_path / "metrics.json").unlink()
    again, _ = train(cfg, tmp_path)
    assert again == first and strict_json(tmp_path / "metrics.json") == first
    assert again["final_loss"] == again["final_loss"] and again["steps_per_s"] > 0


def test_damaged_log_line_and_stale_temp_files_are_cleaned_on_resume(tmp_path, monkeypatch, caplog):
    """A half-written last line of metrics.jsonl (a full disk; simulated by writing half a line)
    is dropped with a warning naming the file; temp files of killed writers are removed."""
    cfg = compose(TOY + ["guidance=sds"])
    train(cfg, tmp_path / "ref")
    inject(monkeypatch, 27, lambda trainer: (_ for _ in ()).throw(KeyboardInterrupt("killed")))
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(cfg, run)
    monkeypatch.undo()
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 30, "loss": 1.2')  # no newline: the write stopped there
    stale = [run / "checkpoints" / ".last.pt.k3j2.tmp", run / ".metrics.json.x9.tmp"]
    for p in stale:
        p.write_bytes(b"half")
    with caplog.at_level("WARNING"):
        train(cfg, run)
    assert any("metrics.jsonl:" in r.getMessage() and "dropped" in r.getMessage() for r in caplog.records)
    assert not any(p.exists() for p in stale)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert lines[:-1] == (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()[:-1]
    attempts = json.loads((run / "run_info.json").read_text())["attempts"]
    assert [a["status"] for a in attempts] == ["interrupted", "finished"]  # a history, not overwritten


def test_a_different_run_is_refused_before_any_checkpoint_and_changes_nothing(tmp_path, monkeypatch):
    inject(monkeypatch, 3, lambda trainer: (_ for _ in ()).throw(KeyboardInterrupt("killed")))
    with pytest.raises(KeyboardInterrupt):
        train(compose(TOY + ["guidance=sds"]), tmp_path)
    assert not (tmp_path / CHECKPOINT).exists()
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match=r"different run.*guidance.scale: 101.0 -> 7.5; seed: 0 -> 5"):
        train(compose(TOY + ["guidance=sds", "seed=5", "guidance.scale=7.5"]), tmp_path)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_raising_max_steps_continues_a_finished_run_unless_something_reads_it(tmp_path):
    """Issue 11 item 7: SDS (uniform t) continues to the exact result of the longer run; FSD's
    decreasing schedule reads max_steps, so its run is refused naming the key and the part."""
    long, _ = train(compose(TOY + ["guidance=sds", "trainer.max_steps=80"]), tmp_path / "long")
    train(compose(TOY + ["guidance=sds"]), tmp_path / "run")
    m, res = train(compose(TOY + ["guidance=sds", "trainer.max_steps=80"]), tmp_path / "run")
    assert m["steps"] == 80 and m["precision"] == long["precision"] and m["final_loss"] == long["final_loss"]
    with pytest.raises(ConfigError, match="past trainer.max_steps=50"):
        train(compose(TOY + ["guidance=sds", "trainer.max_steps=50"]), tmp_path / "run")
    train(compose(TOY + ["guidance=fsd"]), tmp_path / "fsd")
    with pytest.raises(ConfigError, match=r"trainer.max_steps=80 because schedule=LinearDecreasing"):
        train(compose(TOY + ["guidance=fsd", "trainer.max_steps=80"]), tmp_path / "fsd")


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_run_files_honour_the_umask(tmp_path, umask):
    """Issue 11 item 6: run records, checkpoints and caches get the mode open() would give."""
    from src.fileio import atomic_write

    old = os.umask(umask)
    try:
        path = atomic_write(tmp_path / "x.json", lambda f: f.write(b"{}"))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_progress_in_a_log_file_is_a_line_now_and_then(monkeypatch, caplog):
    """Issue 11 item 6: without a terminal, one line per PROGRESS_LOG_EVERY_S (a fake clock
    advancing one second per step here) instead of a tqdm redraw per step."""
    import io

    from src import loggers

    clock = iter(range(10**6))
    monkeypatch.setattr(loggers.time, "monotonic", lambda: float(next(clock)))
    monkeypatch.setattr(loggers.sys, "stderr", io.StringIO())
    steps = 1000
    with caplog.at_level("INFO", logger="src.loggers"):
        bar = loggers.Progress(steps, 0, "SDS")
        for _ in range(steps):
            bar.update({"loss": 1.0, "t": 500})
        bar.close()
    lines = [r.getMessage() for r in caplog.records]
    assert 2 <= len(lines) <= steps // loggers.PROGRESS_LOG_EVERY_S + 2
    assert lines[-1].startswith("SDS step 1000/1000 (100%)")


def test_shared_caches_drop_temp_files_of_writers_killed_long_ago(tmp_path):
    from src.fileio import SHARED_TEMP_MAX_AGE_S, remove_stale_shared_temp_files

    old, fresh = tmp_path / ".world.pt.ab12.tmp", tmp_path / ".world.pt.cd34.tmp"  # atomic_write's names
    for p in (old, fresh):
        p.write_bytes(b"half")
    long_ago = time.time() - SHARED_TEMP_MAX_AGE_S - 1
    os.utime(old, (long_ago, long_ago))
    remove_stale_shared_temp_files(tmp_path)
    assert not old.exists() and fresh.exists()  # a fresh one may be another run's write


@pytest.mark.parametrize("on", [True, False])
def test_trainer_deterministic_sets_torch(on):
    """trainer.deterministic switches torch's deterministic kernels (the GPU repeatability of
    tests/test_determinism_cuda.py); it is not part of a run's identity (the CPU path is
    deterministic either way)."""
    before, fill = torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory
    try:
        Trainer(compose(TOY + ["guidance=sds", f"trainer.deterministic={str(on).lower()}"]), Path("unused"))
        assert torch.are_deterministic_algorithms_enabled() is on
        # an op without a deterministic kernel warns instead of stopping the run
        assert not on or torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.utils.deterministic.fill_uninitialized_memory is False
    finally:
        torch.use_deterministic_algorithms(before)
        torch.utils.deterministic.fill_uninitialized_memory = fill
