"""Export of a NeRF run: mesh (.glb, .ply), turntable (.mp4), grid of views (.png)."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import torch

from src.export.mesh import extract_mesh, write_mesh
from src.export.video import render_frames, write_grid, write_video

log = logging.getLogger(__name__)

# threestudio's turntable (``n_test_views`` 120 at 30 fps = 4 s); fewer frames on a CPU.
DEFAULT_N_FRAMES = 24
DEFAULT_FPS = 12


def default_turntable(n: int, resolution: int = 64):
    """threestudio's eval camera (elevation 15, distance 1.5, fovy 70) when no views are given."""
    from src.cameras_orbit import make_views, turntable_azimuths

    full = lambda v: torch.full((n,), float(v))  # noqa: E731
    return make_views(turntable_azimuths(n), full(15.0), full(1.5), full(70.0), resolution, resolution)


def export_nerf(
    nerf,
    out_dir: Path,
    views=None,
    mesh_resolution: int = 96,
    isosurface_threshold: float | str = "auto",
    video_resolution: int | None = None,
    n_frames: int | None = None,
    fps: int = DEFAULT_FPS,
    formats=("glb", "ply"),
) -> list[Path]:
    """Everything a run leaves under ``out_dir``: mesh.glb / mesh.ply per object
    (object k > 0 as mesh_k.*), turntable.mp4 and views.png.

    views: the turntable cameras (the camera sampler's ``eval_views()``); its
    resolution is used unless ``video_resolution`` is set (a NeRF renders any size).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = nerf.fields[0].encoding.table.device
    paths: list[Path] = []
    for k in range(nerf.n_objects):
        mesh = extract_mesh(
            lambda x, k=k: nerf.density(x, k), lambda x, k=k: nerf.color(x, k), nerf.radius,
            mesh_resolution, isosurface_threshold, device=device,
        )
        paths += write_mesh(mesh, out_dir, "mesh" if k == 0 else f"mesh_{k}", formats)
    if views is None:
        views = default_turntable(n_frames or DEFAULT_N_FRAMES)
    elif n_frames is not None and n_frames != len(views):
        log.info("export: using the %d given views (n_frames=%d ignored)", len(views), n_frames)
    if video_resolution:
        views = replace(views, height=int(video_resolution), width=int(video_resolution))
    for k in range(nerf.n_objects):
        v = replace(views, index=torch.full_like(views.index, k))
        frames = render_frames(nerf, v)
        sfx = "" if k == 0 else f"_{k}"
        paths.append(write_video(frames, out_dir / f"turntable{sfx}.mp4", fps))
        paths.append(write_grid(frames, out_dir / f"views{sfx}.png"))
    return paths
