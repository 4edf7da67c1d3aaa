"""The sweep report (src/studies/report.py): settings x seeds -> report.csv / .md / .png, grid.png."""

import csv
import json
import re
import shutil
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
    assert str(unfinished) in md and "| note" not in md  # non-numbers are skipped
    # no sweep.yaml: the fixed settings are the overrides every run shares
    assert "**Fixed in every run**: `guidance=esd`, `trainer.max_steps=10`, `seeds=0 1 2`." in md
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
    # the cost column last; the other timing values in the CSV only
    assert "| guidance | n | precision | rmse | wall_time_s |" in md
    assert "wall_time_s_mean" in rows["sds"] and "steps_per_s" not in md


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


def test_shapes_tables_keeps_experiments_and_learned_models_apart(tmp_path):
    """A sweep over two worlds (sweeps/shapes_multiview.yaml: the cone and the Janus world) and
    runs on a learned model of a world (backbone.path, sweeps/shapes_ldm.yaml) give one row group
    each: the experiment is a column and a key suffix, the model directory names the prior."""
    sweep = tmp_path / "s"
    for exp, seed, mode in [("cone_world", 0, 12), ("cone_world", 1, 13), ("janus_world", 0, 0)]:
        fake_run(sweep, [f"experiment={exp}", "guidance=sds", f"seed={seed}"],
                 {"status": "finished", "mode_id": mode, "precision": 1.0, "janus_rate": 0.0})
    learned = fake_run(sweep, ["guidance=sds", "seed=0", "backbone=shapes_ldm"],
                       {"status": "finished", "mode_id": 14, "precision": 0.5})
    (learned / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"backbone": {"path": "models/shapes_ldm"}}))
    assert shapes_tables.main([str(sweep), "--out", str(tmp_path / "t")]) == 0
    table = json.loads((tmp_path / "t.json").read_text())["table"]
    assert sorted(table) == ["sds/nerf/learned (shapes_ldm)", "sds/nerf@cone_world", "sds/nerf@janus_world"]
    assert table["sds/nerf@cone_world"]["mode_ids"] == [12, 13] and table["sds/nerf@janus_world"]["mode_ids"] == [0]
    md = (tmp_path / "t.md").read_text()
    assert "| cone_world | sds | nerf | camera | 12 13 | 2 | 1.00 | 1.00 | 0.00 |" in md
    assert "|  | sds | nerf | learned (shapes_ldm) | 14 | 1 | 0.00 | 0.50 |  |" in md


def test_shapes_tables_shows_earlier_tables_beside_without_joining_them(tmp_path):
    """--beside: another table's NeRF groups (e.g. the exact prior of the world whose learned twin
    this sweep ran) appear per method in columns of their own, never in this table's rows."""
    exact = tmp_path / "exact.json"
    exact.write_text(json.dumps({"rows": [], "table": {
        "sds/nerf": {"method": "sds", "representation": "nerf", "prior": "camera", "distinct_modes": 1,
                     "mode_entropy_bits": 0.0, "mean_precision": 1.0, "mean_janus_rate": None},
        "sds/gaussians": {"method": "sds", "representation": "gaussians", "prior": "camera", "distinct_modes": 1,
                          "mode_entropy_bits": 0.0, "mean_precision": 0.9, "mean_janus_rate": None}}}))
    sweep = tmp_path / "s"
    fake_run(sweep, ["guidance=sds", "seed=0"], {"status": "finished", "mode_id": 12, "precision": 0.75})
    fake_run(sweep, ["guidance=sds", "seed=1"], {"status": "finished", "mode_id": 13, "precision": 0.25})
    assert shapes_tables.main([str(sweep), "--beside", str(exact), "--out", str(tmp_path / "t")]) == 0
    data = json.loads((tmp_path / "t.json").read_text())
    assert [r["seed"] for r in data["rows"]] == [0, 1] and list(data["beside"][str(exact)]) == ["sds/nerf"]
    md = (tmp_path / "t.md").read_text()
    assert ("| sds | nerf | 2 modes, 1.00 bits, precision 0.50 | 1 modes, 0.00 bits, precision 1.00 |" in md)
    assert f"| method | representation | this study: camera | {exact}: camera |" in md


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
    assert "runs in more than one source: [('', 'camera', 'nerf', 'sds', 0)]" in capsys.readouterr().err
    assert not (tmp_path / "u.json").exists()


def test_shapes_tables_a_run_cut_off_in_one_source_and_finished_in_another_is_not_listed_unfinished(tmp_path):
    """A study resumed on a second machine: the first sweep dir keeps the cut-off run (no
    metrics.json), the second has it finished; the table counts it once and lists no unfinished run,
    while a run unfinished everywhere stays listed."""
    first, second = tmp_path / "gpu", tmp_path / "cpu"
    fake_run(first, ["guidance=sds", "seed=0"], {"status": "finished", "mode_id": 13, "precision": 1.0})
    fake_run(first, ["guidance=sds", "seed=1"], None)
    fake_run(first, ["guidance=sds", "seed=2"], None)
    fake_run(second, ["guidance=sds", "seed=1"], {"status": "finished", "mode_id": 12, "precision": 0.5})
    assert shapes_tables.main([str(first), str(second), "--out", str(tmp_path / "t")]) == 0
    data = json.loads((tmp_path / "t.json").read_text())
    assert data["table"]["sds/nerf"]["mode_ids"] == [13, 12]
    assert [Path(m.split(" (")[0]).name for m in data["unfinished"]] == ["guidance=sds,seed=2"]
    assert [r["run"] for r in data["rows"]] == ["guidance=sds,seed=0", "guidance=sds,seed=1"]


# -- the report that answers the question (issue 30): the toy shapes_modes sweep, faked ------------
# sweeps/shapes_modes.yaml's toy section: SDS and FSD x seeds 0-2 on "a cone" (4 equally likely
# cones: class ids 12-15 = red, green, blue, yellow cone in the default ShapesWorld)
TOY_MODES = {"sds": [12, 12, 12], "fsd": [15, 13, -1]}
TOY_PRECISION = {"sds": [1.0, 1.0, 0.875], "fsd": [1.0, 0.75, 0.0]}
CONE_RGB = {12: (217, 38, 38), 13: (51, 178, 64), 14: (51, 89, 229), 15: (229, 204, 38), -1: (128, 128, 128)}


def fake_toy_sweep(root: Path, steps: int = 150) -> Path:
    sweep = root / "shapes_modes_toy"
    sweep.mkdir(parents=True)
    fixed = {"experiment": "shapes_modes", "trainer.max_steps": steps, "camera.n_eval_views": 8}
    (sweep / "sweep.yaml").write_text(yaml.safe_dump(
        {"name": "shapes_modes", "overrides": fixed, "grid": {"guidance": ["sds", "fsd"], "seed": [0, 1, 2]}},
        sort_keys=False))
    config = {"prompt": "a cone", "trainer": {"max_steps": steps}, "camera": {"n_eval_views": 8},
              "backbone": {"_target_": "src.backbones.shapes.ShapesWorld"},
              "representation": {"_target_": "src.representations.nerf.NeRF"}}
    for g, modes in TOY_MODES.items():
        for seed, (mode, prec) in enumerate(zip(modes, TOY_PRECISION[g])):
            frames = np.full((8, 32, 32, 3), 255, np.uint8)
            yy, xx = np.mgrid[:32, :32]
            for v in range(8):  # a disc of the mode's colour, a dark mark that turns with the view
                frames[v][(yy - 16) ** 2 + (xx - 16) ** 2 < 100] = CONE_RGB[mode]
                frames[v, 14:18, 4 + 3 * v : 7 + 3 * v] = 20
            run = fake_run(sweep, [f"{k}={v}" for k, v in fixed.items()] + [f"guidance={g}", f"seed={seed}"],
                           {"status": "finished", "mode_id": mode, "precision": prec, "mode_frac": prec,
                            "rmse": 0.1 - prec / 20, "wall_time_s": 30.0 + seed, "steps": float(steps),
                            "steps_per_s": 5.0})
            (run / "export").mkdir()
            np.savez_compressed(run / "export" / "turntable_frames.npz", rgb=frames, azimuth_deg=np.arange(8) * 45.0)
            (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump({**config, "seed": seed}))
            (run / "metrics.jsonl").write_text("".join(
                json.dumps({"step": s, "loss": 1.0 / s + 0.01 * seed, "grad_norm": 2.0}) + "\n"
                for s in range(10, steps + 1, 10)))
    return sweep


def test_report_answers_the_modes_question(tmp_path):
    """Columns method, diversity, quality, cost; class names; mode_frac (= precision on every run)
    shown once; the fixed settings and the truth in the header; the answer figures drawn."""
    sweep = fake_toy_sweep(tmp_path)
    csv_path, md_path = report.write_report(sweep)
    md = md_path.read_text()
    assert ("| guidance | n | mode_id_per_seed | distinct_modes | mode_entropy | precision | rmse | wall_time_s |"
            in md)
    assert "| fsd | 3 | yellow cone, green cone, none | 2 | 1 | 0.5833 ± 0.5204 |" in md
    assert "| sds | 3 | red cone, red cone, red cone | 1 | 0 |" in md
    assert "`mode_frac` equals `precision` on every finished run" in md
    assert ("**Fixed in every run**: `experiment=shapes_modes`, `trainer.max_steps=150`, `camera.n_eval_views=8`, "
            "`prompt=a cone`, `backbone=ShapesWorld`, `representation=NeRF`, `seeds=0 1 2`.") in md
    assert "red cone 25%, green cone 25%, blue cone 25%, yellow cone 25%: 4 modes, entropy 2 bits" in md
    row = {r["guidance"]: r for r in rows_of(csv_path)}["fsd"]
    assert row["mode_id_per_seed"] == "15 13 -1" and row["mode_id_names"] == "yellow cone, green cone, none"
    assert float(row["mode_frac_mean"]) == pytest.approx(float(row["precision_mean"]))  # the CSV keeps both
    for fig in ("tradeoff.png", "modes.png", "curves.png", "views_guidance=fsd.png", "views_guidance=sds.png",
                "report.png", "grid.png"):
        assert f"]({fig})" in md and (sweep / fig).stat().st_size > 0, fig
    html = (sweep / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == 7 and "<td>yellow cone, green cone, none</td>" in html


def test_mode_fractions_and_seed_averaged_curves(tmp_path):
    from src.studies import figures, figures_modes

    assert figures_modes.mode_fractions([15, 13, -1, 15, None]) == {15: 0.5, 13: 0.25, -1: 0.25}
    runs = []
    for seed, offset in ((0, 0.0), (1, 2.0)):  # loss = step + offset, logged every step 1..100
        run = fake_run(tmp_path, [f"seed={seed}"], {"steps": 100.0})
        (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": s + offset}) + "\n"
                                                   for s in range(1, 101)) + "{half a line\n")
        runs.append(studies_runs.read_run(run, {"seed": str(seed)}))
    x, mean, std, n = figures.seed_mean_curves(runs, "loss", 100, bins=4)  # bins [0, 25.25), ...
    assert n == 2 and x.tolist() == pytest.approx([12.625, 37.875, 63.125, 88.375])
    assert mean.tolist() == pytest.approx([np.mean(range(1, 26)) + 1, np.mean(range(26, 51)) + 1,
                                           np.mean(range(51, 76)) + 1, np.mean(range(76, 101)) + 1])
    assert std.tolist() == pytest.approx([np.sqrt(2.0)] * 4)  # sample std of {m, m + 2}


def test_random_weight_metrics_are_marked_and_never_plotted(tmp_path):
    """A sweep without modes: the tradeoff plot's axes come from the evaluation, but not from
    random test weights."""
    for g in ("sds", "fsd"):
        for seed in (0, 1):
            fake_run(tmp_path, [f"guidance={g}", f"seed={seed}"], {"clip_distance": 0.5 + seed / 10})
    runs = {g: [f"guidance={g},seed={s}" for s in (0, 1)] for g in ("sds", "fsd")}
    for weights in ("random", "real"):
        ev = {"weights": weights, "metrics": ["lpips_d"],
              "groups": [{"setting": {"guidance": g}, "runs": runs[g], "lpips_d": 0.25} for g in runs]}
        (tmp_path / "evaluation.json").write_text(json.dumps(ev))
        (tmp_path / "tradeoff.png").unlink(missing_ok=True)
        md = report.write_report(tmp_path)[1].read_text()
        assert ("| lpips_d† |" in md and "random test weights" in md) == (weights == "random")
        assert (tmp_path / "tradeoff.png").exists() == (weights == "real")


# The browser test: Debian's chromium (`apt-get install chromium`; .ci/run installs it).
CHROMIUM = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
PROBE = """<script>
window.addEventListener("load", () => {
  const boxes = [...document.querySelectorAll("table, figure img")].map(el => {
    const r = el.getBoundingClientRect();
    return [el.closest("figure") ? el.closest("figure").id : "table", r.left, r.top, r.width, r.height,
            el.naturalWidth || 0];
  });
  const pre = document.createElement("pre");
  pre.id = "probe"; pre.style.display = "none"; pre.textContent = JSON.stringify(boxes);
  document.body.appendChild(pre);
});
</script></body>"""


def chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--force-device-scale-factor=1", "--virtual-time-budget=5000", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (Debian: apt-get install chromium)")
def test_report_html_opens_in_a_browser_with_the_table_and_the_answer_figures(tmp_path):
    """report.html of the toy sweep, one file (copied alone elsewhere), in headless Chromium: the
    browser lays out the table and decodes the inline figures, and its screenshot shows them
    where the page puts them: the screenshot's pixels there are the figures' own PNGs."""
    import imageio.v2 as imageio

    sweep = fake_toy_sweep(tmp_path)
    report.write_report(sweep)
    alone = tmp_path / "alone"
    alone.mkdir()
    page = alone / "report.html"  # no figure files beside it: everything is inline
    page.write_text((sweep / "report.html").read_text().replace("</body>", PROBE))
    dom = chromium("--window-size=1400,1000", "--dump-dom", page.as_uri())
    probe = re.search(r'<pre id="probe"[^>]*>(.*?)</pre>', dom.stdout, re.S)
    assert probe, dom.stderr[-2000:]
    boxes = {name: (round(x), round(y), round(w), round(h), natural) for name, x, y, w, h, natural
             in json.loads(probe.group(1).replace("&quot;", '"'))}
    assert {"table", "tradeoff", "modes", "views_guidance=fsd", "curves"} <= set(boxes)
    height = max(y + h for _, y, _, h, _ in boxes.values()) + 20
    shot = tmp_path / "shot.png"
    out = chromium(f"--window-size=1400,{height}", f"--screenshot={shot}", page.as_uri())
    assert shot.exists(), out.stderr[-2000:]
    img = np.asarray(imageio.imread(shot))[..., :3].astype(int)
    # the table: its header row in the page's header colour, dark text in its cells
    x, y, w, h, _ = boxes["table"]
    table = img[y : y + h, x : x + w]
    header = (np.abs(table - (0xDB, 0xE4, 0xF0)).sum(-1) == 0).mean()
    assert w > 600 and 0.1 < header < 0.6, (w, header)  # two body rows below the header
    assert (table.sum(-1) < 200).mean() > 0.01  # text
    for name in ("tradeoff", "modes"):  # the figures: the browser shows the PNG's own pixels
        x, y, w, h, natural = boxes[name]
        png = np.asarray(imageio.imread(sweep / f"{name}.png"))[..., :3].astype(int)
        assert natural == png.shape[1] == w and png.shape[0] == h, (name, boxes[name], png.shape)
        assert np.abs(img[y : y + h, x : x + w] - png).mean() < 2.0, name
    # the setting colours are on screen: the blue (fsd, C0) and orange (sds, C1) of the plots
    for rgb in ((0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)):
        assert (np.abs(img - rgb).sum(-1) == 0).sum() > 200, rgb


def test_a_setting_that_reached_no_mode_sits_at_zero_diversity(tmp_path, monkeypatch):
    """Its mode entropy is undefined (blank in the table), its diversity in tradeoff.png is 0."""
    from src.studies import figures_modes

    for g, modes in (("sds", [-1, -1]), ("fsd", [12, 13])):
        for seed, m in enumerate(modes):
            fake_run(tmp_path, [f"guidance={g}", f"seed={seed}"], {"mode_id": m, "precision": float(m >= 0)})
    drawn = {}
    monkeypatch.setattr(figures_modes, "write_tradeoff_png", lambda path, points, *a: drawn.update(
        {p["label"]: (p["x"], p["y"]) for p in points}))
    md = report.write_report(tmp_path)[1].read_text()
    assert "| sds | 2 | -1 -1 | 0 |  | 0 ± 0 |" in md
    assert drawn == {"fsd": (1.0, 1.0), "sds (no seed reached a mode)": (0.0, 0.0)}


def test_only_repeats_are_shown_once_never_two_constants(tmp_path):
    """janus_rate 0 on every run is no repeat of an rmse that happens to be 0 too; mode_frac equal
    to precision is (src/studies/report.py: REPEATS), and a varying column equal to another."""
    for seed in (0, 1):
        fake_run(tmp_path, [f"seed={seed}"], {"precision": 1.0, "mode_frac": 1.0, "rmse": 0.0, "janus_rate": 0.0,
                                              "a": float(seed), "b": float(seed)})
    runs = studies_runs.find_runs(tmp_path)
    assert report.duplicates(["precision", "mode_frac", "rmse", "janus_rate", "a", "b"], runs) == {
        "mode_frac": "precision", "b": "a"}


def test_class_names_only_from_a_backbone_that_has_them_and_never_by_building_sd(tmp_path, monkeypatch):
    import hydra.utils

    from src.studies.context import class_world

    runs = []
    for seed in (0, 1):
        run = fake_run(tmp_path, [f"seed={seed}"], {"mode_id": 3})
        (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(
            {"prompt": "a lion", "backbone": {"_target_": "src.backbones.sd.StableDiffusion", "path": "nowhere"}}))
        runs.append(studies_runs.read_run(run, {"seed": str(seed)}))
    monkeypatch.setattr(hydra.utils, "instantiate", lambda *a, **k: pytest.fail("built the backbone"))
    assert class_world(runs) is None  # SD has no classes: its ids stay ids
    monkeypatch.undo()
    for run in runs:  # ShapesWorld, but two prompts: no one truth
        (run.dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(
            {"prompt": f"a {'red' if run.seed == '0' else 'blue'} cone",
             "backbone": {"_target_": "src.backbones.shapes.ShapesWorld"}}))
    assert class_world(runs) is None
    (runs[1].dir / ".hydra" / "config.yaml").write_text((runs[0].dir / ".hydra" / "config.yaml").read_text())
    world = class_world(runs)
    assert world.truth == {12: 1.0} and world.name(12) == "red cone" and world.name(-1) == "none"
    assert world.truth_entropy == 0.0


def test_a_backbone_that_no_longer_builds_leaves_the_ids_and_the_report(tmp_path, caplog):
    for seed in (0, 1):
        run = fake_run(tmp_path, [f"seed={seed}"], {"mode_id": 12})
        (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(
            {"prompt": "a cone", "backbone": {"_target_": "src.backbones.shapes.ShapesWorld", "gone_option": 1}}))
    md = report.write_report(tmp_path, figures=False)[1].read_text()
    assert "| 2 | 12 12 | 1 | 0 |" in md  # ids, not names
    assert "class names left out of the report" in caplog.text and "gone_option" in caplog.text
