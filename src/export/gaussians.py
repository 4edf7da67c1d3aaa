"""Export of a Gaussian-splatting run: the Gaussians as a 3DGS .ply, turntable (.mp4), grid (.png).

The .ply has the layout of the 3DGS reference code (``GaussianModel.save_ply``), which
viewers (SIBR, SuperSplat, antimatter15/splat) and threestudio-3dgs read: one binary
little-endian ``vertex`` element of float32 properties
``x y z nx ny nz f_dc_0 f_dc_1 f_dc_2 f_rest_0 ... f_rest_{3M-1} opacity scale_0 scale_1
scale_2 rot_0 rot_1 rot_2 rot_3`` with M = (d + 1)^2 - 1 for SH degree d (no ``f_rest_*``
at degree 0; viewers read the degree from their count). Stored *pre-activation*, as 3DGS
does: ``opacity`` is the logit, ``scale_*`` the log-scales, ``rot_*`` the quaternion wxyz,
``f_dc`` the SH DC coefficient (rgb = 0.5 + C0 f_dc), ``f_rest`` channel-major (3DGS's
``_features_rest.transpose(1, 2).flatten(1)``: f_rest_{c M + j} is band j of channel c);
normals are zero.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from src.export.video import DEFAULT_FPS, write_turntables

SH_C0 = 0.28209479177387814


def ply_properties(sh_degree: int = 0) -> list[str]:
    """The 3DGS vertex properties, in order, for SH degree ``sh_degree``."""
    n_rest = 3 * ((sh_degree + 1) ** 2 - 1)
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
            + [f"f_rest_{i}" for i in range(n_rest)] + ["opacity"]
            + [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)])


PLY_PROPERTIES = ply_properties(0)


def gaussians_table(means, log_scales, quats, opacity_logits, sh0, sh_rest=None) -> np.ndarray:
    """(N, P) float32 rows in ``ply_properties(d)`` order from one object's parameters:
    means (N, 3), log_scales (N, 3), quats (N, 4), opacity_logits (N,), sh0 (N, 1, 3) and
    sh_rest (N, (d+1)^2 - 1, 3) or None (degree 0)."""
    t = lambda x: x.detach().float().cpu()  # noqa: E731
    means = t(means)
    rest = [] if sh_rest is None or sh_rest.shape[1] == 0 else [t(sh_rest).transpose(1, 2).flatten(1)]
    cols = [means, torch.zeros_like(means), t(sh0)[:, 0, :], *rest, t(opacity_logits)[:, None],
            t(log_scales), t(quats)]
    return torch.cat(cols, 1).numpy().astype(np.float32)


def write_gaussians_ply(table: np.ndarray, path: Path, sh_degree: int = 0) -> Path:
    """A binary little-endian PLY with one float property per column of ``table``
    (``ply_properties(sh_degree)``)."""
    names = ply_properties(sh_degree)
    if table.shape[1] != len(names):
        raise ValueError(f"{table.shape[1]} columns, SH degree {sh_degree} has {len(names)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {table.shape[0]}"]
    header += [f"property float {name}" for name in names] + ["end_header"]
    with open(path, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(np.ascontiguousarray(table, dtype="<f4").tobytes())
    return path


def read_gaussians_ply(path: Path) -> dict[str, np.ndarray]:
    """Inverse of ``write_gaussians_ply`` (any float32 vertex properties): name -> (N,)."""
    data = Path(path).read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    lines = data[:end].decode("ascii").splitlines()
    if lines[1] != "format binary_little_endian 1.0":
        raise ValueError(f"{path}: not a binary little-endian PLY")
    n = next(int(line.split()[2]) for line in lines if line.startswith("element vertex"))
    names = [line.split()[2] for line in lines if line.startswith("property float")]
    arr = np.frombuffer(data[end:], dtype="<f4", count=n * len(names)).reshape(n, len(names))
    return {name: arr[:, i] for i, name in enumerate(names)}


def export_gaussians(
    gs, out_dir: Path, views=None, video_resolution: int | None = None,
    n_frames: int | None = None, fps: int = DEFAULT_FPS,
) -> list[Path]:
    """gaussians.ply per object (object k > 0 as gaussians_k.ply), turntable.mp4, views.png."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    d = gs.active_sh_degree  # the degree reached: the bands the renders used
    for k in range(gs.n_objects):
        p = gs.splats[k]
        rest = p["shN"][:, : (d + 1) ** 2 - 1] if d > 0 else None
        table = gaussians_table(p["means"], p["scales"], p["quats"], p["opacities"], p["sh0"], rest)
        name = "gaussians.ply" if k == 0 else f"gaussians_{k}.ply"
        paths.append(write_gaussians_ply(table, out_dir / name, sh_degree=d))
    return paths + write_turntables(gs, out_dir, views, n_frames, video_resolution, fps)
