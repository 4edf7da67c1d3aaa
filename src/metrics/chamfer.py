"""Chamfer-D (dive3d_sim): mean pairwise Chamfer distance between the shapes of a group's runs.

A run's shape is a weighted point set read from its export (``shape_points``):
- a mesh (NeRF: ``export/mesh.ply``, world frame, z-up): ``N_SURFACE_POINTS`` points drawn
  uniformly on its surface (trimesh), all of weight 1. The draw uses one fixed generator
  (src/rng.py, stream METRICS) for every run, so identical meshes give identical points;
- Gaussians (``export/gaussians.ply``): their centres, each weighted by its opacity; centres
  below ``MIN_OPACITY`` are invisible and left out.

The distance (symmetric, in world units, not squared):
    CD(A, B) = 1/2 [ sum_a w_a min_b |a - b| / sum_a w_a  +  sum_b w_b min_a |b - a| / sum_b w_b ]
so a shape moved rigidly by d has CD = d when every point's nearest neighbour is its own copy.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from src import rng
from src.metrics.pairs import mean_pairwise

# Points drawn on a mesh: the mean nearest-neighbour distance of two draws of the same unit
# sphere is ~0.02 at 4096 points; identical meshes give identical draws (distance 0).
N_SURFACE_POINTS = 4096
# gsplat's rasterizer skips a Gaussian of alpha < 1/255 (it never shows on screen).
MIN_OPACITY = 1.0 / 255.0

PointSet = tuple[np.ndarray, np.ndarray]  # points (N, 3), weights (N,)


def chamfer_distance(a: np.ndarray, b: np.ndarray, wa: np.ndarray | None = None,
                     wb: np.ndarray | None = None) -> float:
    """Symmetric weighted Chamfer distance between point sets a (N, 3) and b (M, 3)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) == 0 or len(b) == 0:
        return math.nan
    wa = np.ones(len(a)) if wa is None else np.asarray(wa, np.float64)
    wb = np.ones(len(b)) if wb is None else np.asarray(wb, np.float64)
    d_ab = cKDTree(b).query(a)[0]
    d_ba = cKDTree(a).query(b)[0]
    return 0.5 * (float((wa * d_ab).sum() / wa.sum()) + float((wb * d_ba).sum() / wb.sum()))


def chamfer_d(shapes: list[PointSet]) -> float:
    """Chamfer-D of a group: mean pairwise Chamfer distance (NaN below two shapes)."""
    return mean_pairwise(shapes, lambda x, y: chamfer_distance(x[0], y[0], x[1], y[1]))


def mesh_points(mesh, n: int = N_SURFACE_POINTS) -> PointSet:
    """n points uniformly on a trimesh's surface, drawn with the fixed METRICS generator."""
    import trimesh

    seed = rng.derive(0, rng.Stream.METRICS)
    pts, _ = trimesh.sample.sample_surface(mesh, n, seed=seed)
    return np.asarray(pts, np.float64), np.ones(len(pts))


def shape_points(run_dir: Path, n: int = N_SURFACE_POINTS) -> PointSet | None:
    """A run's exported shape as a weighted point set, or None when it left no shape."""
    export = Path(run_dir) / "export"
    mesh_file = export / "mesh.ply"
    if mesh_file.exists():
        import trimesh

        mesh = trimesh.load(mesh_file, force="mesh", process=False)
        return mesh_points(mesh, n) if len(mesh.faces) else None
    splats = export / "gaussians.ply"
    if splats.exists():
        from src.export.gaussians import read_gaussians_ply

        g = read_gaussians_ply(splats)
        xyz = np.stack([g["x"], g["y"], g["z"]], 1).astype(np.float64)
        opacity = 1.0 / (1.0 + np.exp(-g["opacity"].astype(np.float64)))  # stored as a logit (3DGS)
        keep = opacity >= MIN_OPACITY
        return (xyz[keep], opacity[keep]) if keep.any() else None
    return None
