"""The sweep report (src/studies/report.py): settings x seeds -> report.csv / .md / .png, grid.png."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from src.studies import report, shapes_tables
from src.studies import runs as studies_runs

REPO = Path(__file__).resolve().parents[1]


def fake_run(sweep_dir: Path, overrides: list[str], metrics: dict | None, frame: np.ndarray | None = None,
             raw: str | None = None):
    run = sweep_dir / ",".join(overrides)
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if raw is not None:
        (run / "metrics.json").write_text(raw)
    elif metrics is not None:
        (run / "metrics.json").write_text(json.dumps(metrics))
    if frame is not None:
        (run / "export").mkdir()
        np.savez_compressed(run / "export" / "turntable_frames.npz", rgb=frame[None])
    return run


def rows_of(csv_path):
    return list(csv.DictReader(csv_path.open()))


def test_report_groups_by_swept_values_mean_and_std_over_seeds(tmp_path):
    fixed = ["guidance=esd", "trainer.max_steps=10"]
    for lam, seed, prec in [(0.0, 0, 0.2), (0.0, 1, 0.4), (0.5, 0, 0.6), (0.5, 1, 0.8), (0.5, 2, 1.0)]:
        fake_run(tmp_path, [*fixed, f"guidance.lam={lam}", f"seed={seed}"], {"precision": prec, "note": "x"})
    unfinished = fake_run(tmp_path, [*fixed, "guidance.lam=1.0", "seed=0"], None)
    (tmp_path / ".submitit" / "1_0").mkdir(parents=True)  # not a run

    csv_path, md_path = report.write_report(tmp_path)
    rows = rows_of(csv_path)
    assert [r["guidance.lam"] for r in rows] == ["0.0", "0.5", "1.0"]
    assert "seed" not in rows[0] and "guidance" not in rows[0]  # fixed keys are no columns
    assert float(rows[0]["precision_mean"]) == pytest.approx(0.3)
    assert float(rows[0]["precision_std"]) == pytest.approx(0.1414213, rel=1e-5)  # sample std
    assert float(rows[1]["precision_mean"]) == pytest.approx(0.8) and rows[1]["n"] == "3"
    assert rows[2]["n_finished"] == "0" and rows[2]["precision_mean"] == ""
    md = md_path.read_text()
    assert "| guidance.lam | n | precision |" in md and "0.3 ± 0.1414" in md
    assert str(unfinished) in md and "note" not in md  # non-numbers are skipped
    assert (tmp_path / "report.png").stat().st_size > 0 and (tmp_path / "grid.png").exists()


def test_report_uses_sweep_record_and_numeric_order(tmp_path):
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({"grid": {"guidance.M": [0, 200, 1000], "seed": [0]}}))
    for m in (1000, 200, 0):
        fake_run(tmp_path, [f"guidance.M={m}", "seed=0"], {"loss": m / 10})
    runs = studies_runs.find_runs(tmp_path)
    _, rows = report.aggregate(runs, ["guidance.M"])
    assert [r["guidance.M"] for r in rows] == ["0", "200", "1000"]
    assert rows[0]["loss_std"] is None and rows[0]["loss_n"] == 1  # one seed: no spread
    assert studies_runs.swept_keys(runs, tmp_path) == ["guidance.M", "seed"]


def test_report_script_fails_cleanly_on_empty_dir(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "report.py"), str(tmp_path)],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "no runs" in out.stderr


def test_mode_id_is_listed_per_seed_with_distinct_count_never_averaged(tmp_path):
    """The mode table's FSD row (modes 12, 15, 14, 13) was `mode_id 13.5 ± 1.29`."""
    for g, modes in (("fsd", [12, 15, 14, 13]), ("sds", [12, 12, 12, -1])):
        for seed, m in enumerate(modes):
            fake_run(tmp_path, [f"guidance={g}", f"seed={seed}"], {"mode_id": m, "precision": 1.0})
    csv_path, md_path = report.write_report(tmp_path)
    rows = {r["guidance"]: r for r in rows_of(csv_path)}
    assert "mode_id_mean" not in rows["fsd"]
    assert rows["fsd"]["mode_id_per_seed"] == "12 15 14 13"
    assert rows["fsd"]["distinct_modes"] == "4" and float(rows["fsd"]["mode_entropy"]) == pytest.approx(2.0)
    assert rows["sds"]["distinct_modes"] == "1" and float(rows["sds"]["mode_entropy"]) == 0.0  # -1: no mode
    md = md_path.read_text()
    assert "13.5" not in md and "12 15 14 13" in md


def test_failed_diverged_unfinished_and_nan_runs(tmp_path):
    """Issue 11's metrics.json: strict JSON with a status; older files without one are finished."""
    fake_run(tmp_path, ["guidance=sds", "seed=0"], {"status": "finished", "precision": 1.0, "rmse": None,
                                                      "wall_time_s": 3.0})
    fake_run(tmp_path, ["guidance=sds", "seed=1"], None, raw='{"precision": 0.5, "rmse": NaN}')  # old file
    fake_run(tmp_path, ["guidance=sds", "seed=2"], {"status": "diverged", "failed_step": 7, "last_good_step": 5,
                                                      "error": "loss is nan", "precision": None})
    fake_run(tmp_path, ["guidance=vsd", "seed=0"], {"status": "failed", "error": "CUDA out of memory"})
    fake_run(tmp_path, ["guidance=vsd", "seed=1"], None)
    csv_path, md_path = report.write_report(tmp_path)
    rows = {r["guidance"]: r for r in rows_of(csv_path)}
    assert rows["sds"]["n"] == "3" and rows["sds"]["n_finished"] == "2"
    assert float(rows["sds"]["precision_mean"]) == pytest.approx(0.75)
    assert rows["sds"]["rmse_mean"] == "" and rows["sds"]["rmse_n"] == "0"  # null and NaN are no values
    assert rows["vsd"]["n_finished"] == "0"
    md = md_path.read_text()
    assert "diverged at step 7: loss is nan" in md and "failed: CUDA out of memory" in md
    assert "## Unfinished runs (1)" in md
    assert "wall_time_s_mean" in rows["sds"] and "wall_time_s" not in md  # timing: CSV only


def test_group_metrics_join_from_the_evaluation_and_go_stale(tmp_path):
    frame = np.zeros((8, 8, 3), np.uint8)
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({"grid": {"guidance": ["sds"], "seed": [0, 1, 2]}}))
    for seed in (0, 1):
        fake_run(tmp_path, ["guidance=sds", f"seed={seed}"], {"precision": 1.0}, frame)
    runs = [f"guidance=sds,seed={s}" for s in (0, 1)]
    evaluation = {"weights": "random", "metrics": ["lpips_d", "chamfer_d", "clip_distance"],
                  "runs": {runs[0]: {"clip_distance": 0.25}, runs[1]: {"clip_distance": 0.75}},
                  "groups": [{"setting": {"guidance": "sds"}, "runs": runs, "lpips_d": 0.125, "chamfer_d": None}]}
    (tmp_path / "evaluation.json").write_text(json.dumps(evaluation))
    csv_path, md_path = report.write_report(tmp_path)
    row = rows_of(csv_path)[0]
    assert float(row["lpips_d"]) == 0.125 and row["chamfer_d"] == ""
    assert float(row["clip_distance_mean"]) == pytest.approx(0.5)
    assert "weights: **random**" in md_path.read_text()
    fake_run(tmp_path, ["guidance=sds", "seed=2"], {"precision": 1.0}, frame)  # a new seed finished
    csv_path, md_path = report.write_report(tmp_path)
    assert rows_of(csv_path)[0]["lpips_d"] == "" and "(stale)" in md_path.read_text()


def test_grid_png_has_a_cell_per_setting_and_seed(tmp_path):
    import imageio.v2 as imageio

    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 255
    for g in ("fsd", "sds"):
        for seed in (0, 1, 2):
            fake_run(tmp_path, [f"guidance={g}", f"seed={seed}"], {"precision": 1.0}, red)
    report.write_report(tmp_path)
    img = np.asarray(imageio.imread(tmp_path / "grid.png"))[..., :3].astype(int)
    pure_red = (img[..., 0] > 240) & (img[..., 1] < 15) & (img[..., 2] < 15)
    # six red cells: six separate blobs along the rows and columns of the figure
    cols = np.flatnonzero(np.diff(np.r_[0, pure_red.any(0).astype(int)]) == 1)
    rows = np.flatnonzero(np.diff(np.r_[0, pure_red.any(1).astype(int)]) == 1)
    assert len(cols) == 3 and len(rows) == 2


def test_shapes_tables_per_method_modes_entropy_and_failed_runs(tmp_path):
    """src/studies/shapes_tables.py: the issue's json rows, per-method distinct modes and entropy in
    bits; a diverged run is listed, never averaged in."""
    sweep = tmp_path / "shapes_modes"
    fake_run(sweep, ["guidance=sds", "seed=0"], {"status": "finished", "mode_id": 15, "precision": 1.0, "janus_rate": 0.0})
    fake_run(sweep, ["guidance=sds", "seed=1"], {"status": "finished", "mode_id": 12, "precision": 0.5, "janus_rate": 0.5})
    fake_run(sweep, ["guidance=fsd", "seed=0"], {"status": "finished", "mode_id": -1, "precision": None})
    fake_run(sweep, ["guidance=fsd", "seed=1"], {"status": "diverged", "failed_step": 3, "error": "diverged at step 3"})
    assert shapes_tables.main([str(sweep), "--out", str(tmp_path / "out" / "t")]) == 0
    data = json.loads((tmp_path / "out" / "t.json").read_text())
    assert [(r["method"], r["seed"], r["mode_id"]) for r in data["rows"]] == [("fsd", 0, -1), ("sds", 0, 15), ("sds", 1, 12)]
    sds, fsd = data["table"]["sds/nerf"], data["table"]["fsd/nerf"]
    assert sds["distinct_modes"] == 2 and sds["mode_entropy_bits"] == pytest.approx(1.0)
    assert sds["mean_precision"] == pytest.approx(0.75) and sds["mean_janus_rate"] == pytest.approx(0.25)
    assert fsd["distinct_modes"] == 0 and fsd["mode_entropy_bits"] is None and fsd["mean_precision"] == 0.0
    assert len(data["unfinished"]) == 1 and "diverged at step 3" in data["unfinished"][0]
    assert "| sds | nerf | 15 12 | 2 | 1.00 | 0.75 | 0.25 |" in (tmp_path / "out" / "t.md").read_text()


def test_shapes_tables_keeps_the_priors_apart(tmp_path):
    """Runs under ShapesWorld's view-prompt prior (backbone.view_conditioning=prompt, read from the
    run's composed config, else its overrides; a config without the key predates it and is
    view-prompt too) are their own rows, never averaged with the default camera prior's; the
    markdown then shows a prior column and the JSON key a suffix."""
    sweep = tmp_path / "shapes_modes"
    fake_run(sweep, ["guidance=dsd", "seed=0"], {"status": "finished", "mode_id": 15, "precision": 1.0})
    old = fake_run(sweep, ["guidance=dsd", "seed=1"], {"status": "finished", "mode_id": -1, "precision": 0.0})
    (old / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"backbone": {"smoothing": 0.02}}))
    cam = fake_run(sweep, ["guidance=dsd", "seed=2"], {"status": "finished", "mode_id": 13, "precision": 0.5})
    (cam / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"backbone": {"view_conditioning": "camera"}}))
    fake_run(sweep, ["guidance=dsd", "seed=3", "backbone.view_conditioning=prompt"],
             {"status": "finished", "mode_id": 14, "precision": 0.5})
    assert shapes_tables.main([str(sweep), "--out", str(tmp_path / "t")]) == 0
    data = json.loads((tmp_path / "t.json").read_text())
    assert [(r["prior"], r["seed"]) for r in data["rows"]] == [("camera", 0), ("camera", 2), ("prompt", 1), ("prompt", 3)]
    assert data["table"]["dsd/nerf"]["mean_precision"] == pytest.approx(0.75)
    assert data["table"]["dsd/nerf/prompt"]["mean_precision"] == pytest.approx(0.25)
    md = (tmp_path / "t.md").read_text()
    assert "| dsd | nerf | camera | 15 13 | 2 | 1.00 | 0.75 |  |" in md
    assert "| dsd | nerf | prompt | -1 14 | 1 | 0.00 | 0.25 |  |" in md


def test_shapes_tables_joins_an_earlier_table_with_new_runs_and_refuses_a_run_twice(tmp_path, capsys):
    """A table assembled from two machines: the rows of an earlier table JSON (rows without a
    prior are view-prompt, written before the field) plus a sweep dir; a seed present in both
    would weigh double, so it is refused, naming it."""
    earlier = tmp_path / "nerf.json"
    earlier.write_text(json.dumps({"rows": [
        {"method": "sds", "representation": "nerf", "prior": "camera", "seed": 0, "mode_id": 15, "precision": 1.0},
        {"method": "sds", "representation": "nerf", "seed": 1, "mode_id": -1, "precision": 0.0}]}))
    sweep = tmp_path / "gs"
    fake_run(sweep, ["guidance=sds", "representation=gaussians", "seed=0"],
             {"status": "finished", "mode_id": 12, "precision": 0.5})
    (sweep / "guidance=sds,representation=gaussians,seed=0" / "run_info.json").write_text(json.dumps(
        {"device": "cpu", "threads": 1, "git": {"commit": "0123456789abcdef", "dirty": False}}))
    assert shapes_tables.main([str(earlier), str(sweep), "--out", str(tmp_path / "t")]) == 0
    data = json.loads((tmp_path / "t.json").read_text())
    assert data["sweep"] == [str(earlier), str(sweep)]
    assert data["table"]["sds/nerf"]["mode_ids"] == [15] and data["table"]["sds/nerf/prompt"]["mode_ids"] == [-1]
    assert data["table"]["sds/gaussians"]["mean_precision"] == 0.5
    gs = [r for r in data["rows"] if r["representation"] == "gaussians"]
    assert gs[0]["device"] == "cpu" and gs[0]["git"] == "0123456"  # which machine, which revision
    fake_run(tmp_path / "again", ["guidance=sds", "seed=0"], {"status": "finished", "mode_id": 13, "precision": 1.0})
    assert shapes_tables.main([str(earlier), str(tmp_path / "again"), "--out", str(tmp_path / "u")]) == 2
    assert "runs in more than one source: [('camera', 'nerf', 'sds', 0)]" in capsys.readouterr().err
    assert not (tmp_path / "u.json").exists()
