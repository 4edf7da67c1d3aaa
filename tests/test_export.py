"""Exports: marching-cubes mesh with vertex colors, turntable mp4, PNG grid, re-export CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from src.export.mesh import extract_mesh, write_mesh
from src.export.video import make_grid, write_video
from tests._nerf_fixtures import tiny_nerf, views

ROOT = Path(__file__).resolve().parents[1]


def test_sphere_mesh_is_watertight_outward_and_colored(tmp_path):
    density = lambda x: 10.0 * (0.5 - x.norm(dim=-1))  # noqa: E731  inside a ball of radius 0.5
    color = lambda x: torch.tensor([1.0, 0.0, 0.0]).expand(x.shape[0], 3)  # noqa: E731
    mesh = extract_mesh(density, color, radius=1.0, resolution=32, threshold=0.0)
    assert mesh.is_watertight
    assert abs(mesh.volume - 4 / 3 * np.pi * 0.5**3) < 0.02  # positive volume: outward normals
    paths = write_mesh(mesh, tmp_path)
    assert {p.suffix for p in paths} == {".glb", ".ply"}
    ply = trimesh.load(tmp_path / "mesh.ply", process=False)
    assert len(ply.vertices) == len(mesh.vertices) and len(ply.faces) == len(mesh.faces)
    vc = np.asarray(ply.visual.vertex_colors)
    assert vc.shape == (len(ply.vertices), 4) and (vc[:, 0] == 255).all() and (vc[:, 1] == 0).all()
    glb = trimesh.load(tmp_path / "mesh.glb")
    geom = next(iter(glb.geometry.values())) if isinstance(glb, trimesh.Scene) else glb
    assert len(geom.vertices) > 0 and np.asarray(geom.visual.vertex_colors).shape[0] == len(geom.vertices)


def test_empty_field_writes_no_mesh(tmp_path):
    mesh = extract_mesh(lambda x: torch.zeros(x.shape[0]), None, 1.0, 8, threshold=1.0)
    assert write_mesh(mesh, tmp_path) == []


def test_video_frame_count_and_grid(tmp_path):
    import imageio.v2 as imageio

    frames = torch.rand(7, 18, 22, 3)
    p = write_video(frames, tmp_path / "t.mp4", fps=5)
    r = imageio.get_reader(p)
    n = sum(1 for _ in r)
    shape = r.get_data(0).shape
    r.close()
    assert n == 7 and shape == (18, 22, 3)
    grid = make_grid(frames, ncols=4, pad=2)
    assert grid.shape == (2 * 20 - 2, 4 * 24 - 2, 3) and grid.dtype == np.uint8


def test_nerf_export_bundle(tmp_path):
    import imageio.v2 as imageio

    nerf = tiny_nerf(export={"mesh_resolution": 24})
    paths = nerf.export(tmp_path, views(5, res=16))
    names = sorted(p.name for p in paths)
    assert names == ["mesh.glb", "mesh.ply", "turntable.mp4", "views.png"]
    mesh = trimesh.load(tmp_path / "mesh.ply", process=False)
    assert len(mesh.faces) > 0 and np.asarray(mesh.visual.vertex_colors).shape[1] == 4
    # the blob: a ball of radius ~0.5 around the origin
    assert 0.3 < np.linalg.norm(mesh.vertices, axis=1).mean() < 0.6
    r = imageio.get_reader(tmp_path / "turntable.mp4")
    assert sum(1 for _ in r) == 5
    r.close()
    assert nerf.training  # export restores the mode


@pytest.mark.slow
def test_reexport_cli_from_a_run(tmp_path):
    """Train 2 steps on a one-class ShapesWorld, then ``python -m src.export RUN_DIR``."""
    run = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DISTILLERY_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": str(ROOT)}
    train = [sys.executable, "-m", "src.train", "representation=nerf", "backbone=shapes",
             "backbone.shapes=[cube]", "backbone.colors=[red]", "backbone.n_azimuths=4",
             "backbone.n_elevations=2", "prompt=a red cube", "trainer.max_steps=2",
             "trainer.progress=false", "trainer.export=false", "representation.n_samples=8",
             "representation.grid.n_levels=2", "camera.n_eval_views=3", f"hydra.run.dir={run}"]
    r = subprocess.run(train, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (run / "checkpoints" / "last.pt").exists()
    r = subprocess.run([sys.executable, "-m", "src.export", str(run), "--n-frames", "4"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = run / "export"
    assert (out / "turntable.mp4").exists() and (out / "views.png").exists()
    assert (out / "mesh.ply").exists() or (out / "mesh.glb").exists()
    import imageio.v2 as imageio

    rd = imageio.get_reader(out / "turntable.mp4")
    assert sum(1 for _ in rd) == 4
    rd.close()


def test_reexport_cli_errors_on_missing_run(tmp_path):
    from src.export.__main__ import main

    assert main([str(tmp_path / "nope")]) == 2
