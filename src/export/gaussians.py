"""Export of a Gaussian-splatting run: the Gaussians as a 3DGS .ply, turntable (.mp4), grid (.png).

The .ply has the layout of the 3DGS reference code (``GaussianModel.save_ply``), which
viewers (SIBR, SuperSplat, antimatter15/splat) and threestudio-3dgs read: one binary
little-endian ``vertex`` element of float32 properties
``x y z nx ny nz f_dc_0 f_dc_1 f_dc_2 opacity scale_0 scale_1 scale_2 rot_0 rot_1 rot_2 rot_3``
(no ``f_rest_*``: SH degree 0). Stored *pre-activation*, as 3DGS does: ``opacity`` is the
logit, ``scale_*`` the log-scales, ``rot_*`` the quaternion wxyz, ``f_dc`` the SH DC
coefficient ``(rgb - 0.5) / C0``; normals are zero.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from src.export.video import DEFAULT_FPS, write_turntables

PLY_PROPERTIES = (
    ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"]
    + [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)]
)
SH_C0 = 0.28209479177387814


def gaussians_table(means, log_scales, quats, opacity_logits, rgb) -> np.ndarray:
    """(N, 17) float32 rows in PLY_PROPERTIES order from one object's parameters."""
    t = lambda x: x.detach().float().cpu()  # noqa: E731
    means = t(means)
    cols = [means, torch.zeros_like(means), (t(rgb) - 0.5) / SH_C0, t(opacity_logits)[:, None],
            t(log_scales), t(quats)]
    return torch.cat(cols, 1).numpy().astype(np.float32)


def write_gaussians_ply(table: np.ndarray, path: Path) -> Path:
    """A binary little-endian PLY with one float property per column of ``table``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {table.shape[0]}"]
    header += [f"property float {name}" for name in PLY_PROPERTIES] + ["end_header"]
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
    for k in range(gs.n_objects):
        table = gaussians_table(gs.means[k], gs.log_scales[k], gs.quats[k], gs.opacity_logits[k],
                                gs.colors[k])
        paths.append(write_gaussians_ply(table, out_dir / ("gaussians.ply" if k == 0 else f"gaussians_{k}.ply")))
    return paths + write_turntables(gs, out_dir, views, n_frames, video_resolution, fps)
