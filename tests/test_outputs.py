"""What a run and a sweep leave for people: W&B media (3D mesh, no duplicate uploads), the
loss curve, the evaluation's W&B summary run."""

import json

import numpy as np
import pytest
import yaml

pytest.importorskip("wandb")


def test_wandb_media_mesh_as_3d_object_and_no_duplicate_upload(tmp_path):
    import trimesh

    from src.loggers import WandbLogger

    lg = WandbLogger(tmp_path, {"x": 1}, mode="offline")
    logged = []
    lg.run.log = lambda d, step: logged.append((step, {k: type(v).__name__ for k, v in d.items()}))
    trimesh.creation.icosphere().export(tmp_path / "mesh.glb")
    import imageio.v2 as imageio

    imageio.imwrite(tmp_path / "a.png", np.zeros((8, 8, 3), np.uint8))
    imageio.imwrite(tmp_path / "b.png", np.zeros((8, 8, 3), np.uint8))  # same bytes as a.png
    lg.log_media("export/mesh", tmp_path / "mesh.glb", 5)
    lg.log_media("val/grid", tmp_path / "a.png", 5)
    lg.log_media("export/views", tmp_path / "b.png", 5)
    lg.log_media("export/turntable_frames", tmp_path / "mesh.glb", 5)  # not media twice either
    lg.run.finish()
    assert logged == [(5, {"export/mesh": "Object3D"}), (5, {"val/grid": "Image"})]


def test_loss_png_from_metrics_jsonl(tmp_path):
    from src.export.plots import plot_curves

    jsonl = tmp_path / "metrics.jsonl"
    jsonl.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s, "t": 500.0, "final/x": 1}) + "\n"
                             for s in range(1, 6)))
    assert plot_curves(jsonl, tmp_path / "loss.png") == tmp_path / "loss.png"
    assert (tmp_path / "loss.png").stat().st_size > 1000
    assert plot_curves(tmp_path / "none.jsonl", tmp_path / "x.png") is None


def test_loss_curves_are_smoothed_by_an_ema_over_steps():
    """loss.png's smoothed curve (issue 30 item 6): after a jump from 0 to 1, the average is
    1 - 0.5 ** (steps since the last 0 / half-life), whatever the logging interval."""
    from src.export.plots import ema

    for every in (1, 10):
        steps = list(range(0, 400, every))
        smooth = ema(steps, [0.0 if s < 100 else 1.0 for s in steps], half_life=50.0)
        for s, v in zip(steps, smooth):
            expected = 0.0 if s < 100 else 1 - 0.5 ** ((s - (100 - every)) / 50.0)
            assert abs(v - expected) < 1e-12
    assert ema([0, 1], [3.0, 5.0], half_life=0.0) == [3.0, 5.0]  # no smoothing


def test_evaluate_script_writes_evaluation_report_and_a_wandb_summary(tmp_path):
    """scripts/evaluate.py on a two-seed sweep with test weights: evaluation.json, the report
    with the group columns, one offline W&B run of job type evaluation in the sweep's group."""
    import trimesh

    from scripts.evaluate import main

    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(
        {"name": "tiny", "overrides": {"logger": "wandb", "logger.wandb.group": "tiny"},
         "grid": {"guidance": ["sds"], "seed": [0, 1]}}))
    for seed in (0, 1):
        run = tmp_path / f"guidance=sds,seed={seed}"
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["guidance=sds", f"seed={seed}"]))
        (run / "metrics.json").write_text(json.dumps({"mode_id": 12 + seed, "precision": 1.0}))
        (run / "export").mkdir()
        np.savez_compressed(run / "export" / "turntable_frames.npz",
                            rgb=np.full((3, 16, 16, 3), 100 * seed, np.uint8))
        trimesh.creation.box(extents=[1.0, 1.0, 1.0 + seed]).export(run / "export" / "mesh.ply")
    assert main([str(tmp_path), "--weights", "random", "--metrics", "lpips_d,chamfer_d"]) == 0
    ev = json.loads((tmp_path / "evaluation.json").read_text())
    assert ev["groups"][0]["lpips_d"] > 0 and ev["groups"][0]["chamfer_d"] > 0
    import csv

    row = next(csv.DictReader((tmp_path / "report.csv").open()))
    assert row["distinct_modes"] == "2" and float(row["mode_entropy"]) == 1.0
    assert float(row["lpips_d"]) == pytest.approx(ev["groups"][0]["lpips_d"])
    assert {"report.md", "report.png", "grid.png"} <= {p.name for p in tmp_path.iterdir()}
    (wb,) = (tmp_path / "wandb").glob("offline-run-*")  # the summary run, offline
    assert any(wb.glob("*.wandb"))
