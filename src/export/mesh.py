"""Meshes from density fields: marching cubes (PyMCubes) + vertex colors, via trimesh.

Two fixes make the mesh open as expected in a viewer:
- floaters: marching cubes also wraps every blob of stray density. ``remove_floaters`` keeps
  the largest connected component (the object) and any other whose surface area is at least
  ``FLOATER_AREA_FRACTION`` of its area and that stays inside the scene box; it drops the
  specks and the sheets cut by the box's faces (density where no camera looks, e.g. under the
  object, which cameras at elevations >= 0 never see, ends as an open sheet on the box's
  floor: the default job left one of a third of the cone's area, and 175 specks);
- frame: the world is z-up with the object's front at +x (src/cameras_orbit.py), glTF is
  +Y up with the front facing +Z (glTF 2.0 spec, "Coordinate System and Units"), so the .glb
  is written through ``WORLD_TO_GLTF`` (world (x, y, z) -> glTF (y, z, x), a rotation). The
  .ply, a format without a convention, stays in the world frame of the renders and metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger(__name__)

# A component smaller than this fraction of the largest one's area is a floater.
FLOATER_AREA_FRACTION = 0.05
# world z-up, front +x  ->  glTF y-up, front +z: (x, y, z) -> (y, z, x); det = +1
WORLD_TO_GLTF = np.array([[0.0, 1.0, 0.0, 0.0],
                          [0.0, 0.0, 1.0, 0.0],
                          [1.0, 0.0, 0.0, 0.0],
                          [0.0, 0.0, 0.0, 1.0]])


@torch.no_grad()
def sample_grid(fn: Callable[[Tensor], Tensor], radius: float, resolution: int,
                chunk: int = 65536, device=None) -> Tensor:
    """fn on the (res, res, res) lattice of [-radius, radius]^3, axes (x, y, z) -> (res,)*3."""
    lin = torch.linspace(-radius, radius, resolution, device=device)
    pts = torch.stack(torch.meshgrid(lin, lin, lin, indexing="ij"), -1).reshape(-1, 3)
    out = torch.cat([fn(pts[i : i + chunk]).reshape(-1) for i in range(0, pts.shape[0], chunk)])
    return out.view(resolution, resolution, resolution).float().cpu()


def auto_threshold(values: Tensor, eps: float = 1e-5) -> float:
    """threestudio's ``isosurface_threshold: auto``: the mean of the non-empty values."""
    nz = values[values > eps]
    return float(nz.mean()) if nz.numel() else float("inf")


@torch.no_grad()
def extract_mesh(
    density_fn: Callable[[Tensor], Tensor],
    color_fn: Callable[[Tensor], Tensor] | None,
    radius: float,
    resolution: int = 96,
    threshold: float | str = "auto",
    device=None,
):
    """Marching cubes on density_fn's lattice; vertex colors = color_fn at the vertices.

    density_fn: world points (N, 3) -> (N,); color_fn: (N, 3) -> (N, 3) in [0, 1].
    Returns a trimesh.Trimesh (possibly empty) in world coordinates.
    """
    import mcubes
    import trimesh

    vol = sample_grid(density_fn, radius, resolution, device=device)
    thr = auto_threshold(vol) if threshold == "auto" else float(threshold)
    if not (vol.max() > thr):
        log.warning("extract_mesh: density never exceeds %.3g (max %.3g); empty mesh", thr, vol.max())
        return trimesh.Trimesh()
    verts, faces = mcubes.marching_cubes(vol.numpy(), thr)
    verts = verts / (resolution - 1) * 2 * radius - radius  # lattice index -> world
    mesh = trimesh.Trimesh(vertices=verts, faces=np.ascontiguousarray(faces), process=False)
    if color_fn is not None and len(verts):
        v = torch.as_tensor(verts, dtype=torch.float32, device=device)
        rgb = torch.cat([color_fn(v[i : i + 65536]) for i in range(0, v.shape[0], 65536)])
        rgba = np.concatenate(
            [(rgb.clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8),
             np.full((len(verts), 1), 255, np.uint8)], 1)
        mesh.visual.vertex_colors = rgba
    return mesh


def remove_floaters(mesh, min_fraction: float = FLOATER_AREA_FRACTION, box_radius: float | None = None,
                    margin: float = 0.0):
    """(the mesh without its floaters, components before, components kept); vertex colors kept.

    Kept: the largest component, and every other whose area is >= ``min_fraction`` x the
    largest's and whose vertices all lie strictly inside the box [-box_radius + margin,
    box_radius - margin]^3 (when ``box_radius`` is given)."""
    import trimesh

    if mesh is None or len(mesh.faces) == 0:
        return mesh, 0, 0
    parts = mesh.split(only_watertight=False)
    if len(parts) <= 1:
        return mesh, len(parts), len(parts)
    areas = np.array([p.area for p in parts])
    main = int(areas.argmax())

    def inside(p) -> bool:
        return box_radius is None or bool(np.abs(p.vertices).max() < box_radius - margin)

    kept = [p for i, (p, a) in enumerate(zip(parts, areas))
            if i == main or (a >= min_fraction * areas[main] and inside(p))]
    return trimesh.util.concatenate(kept), len(parts), len(kept)


def write_mesh(mesh, out_dir: Path, stem: str = "mesh", formats=("glb", "ply")) -> list[Path]:
    """Write ``mesh`` (world frame) as out_dir/stem.{glb,ply}: the .glb in glTF's frame
    (``WORLD_TO_GLTF``), the .ply in the world's; nothing for an empty mesh."""
    if mesh is None or len(mesh.vertices) == 0:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        p = out_dir / f"{stem}.{fmt}"
        (mesh.copy().apply_transform(WORLD_TO_GLTF) if fmt in ("glb", "gltf") else mesh).export(p)
        paths.append(p)
    return paths
