"""Export of a NeRF run: mesh (.glb, .ply), turntable (.mp4), grid of views (.png)."""

from __future__ import annotations

import logging
from pathlib import Path

from src.export.mesh import FLOATER_AREA_FRACTION, extract_mesh, remove_floaters, write_mesh
from src.export.video import DEFAULT_FPS, write_turntables


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
    floater_area_fraction: float = FLOATER_AREA_FRACTION,
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
        # a component within one lattice cell of the box's faces was cut by the box
        cell = 2 * nerf.radius / (mesh_resolution - 1)
        mesh, before, after = remove_floaters(mesh, floater_area_fraction, nerf.radius, 1.5 * cell)
        logging.getLogger(__name__).info("mesh %d: %d connected components, %d kept (the largest, and "
                                         "those of area >= %g x its area inside the box)", k, before, after, floater_area_fraction)
        paths += write_mesh(mesh, out_dir, "mesh" if k == 0 else f"mesh_{k}", formats)
    return paths + write_turntables(nerf, out_dir, views, n_frames, video_resolution, fps)
