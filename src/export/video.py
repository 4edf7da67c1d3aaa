"""Turntable videos and image grids of rendered views."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


def to_uint8(frames: Tensor | np.ndarray) -> np.ndarray:
    """(N, H, W, 3) float in [0, 1] (or uint8) -> uint8 numpy."""
    if isinstance(frames, Tensor):
        frames = frames.detach().float().cpu().numpy()
    if frames.dtype == np.uint8:
        return frames
    return (np.clip(frames, 0.0, 1.0) * 255).round().astype(np.uint8)


def video_writer_problem() -> str | None:
    """Why ``write_video`` would fail here (imageio-ffmpeg or its ffmpeg binary missing), or None.
    Checked before a run trains (src/build.py), not found after it."""
    try:
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as err:  # ImportError, or RuntimeError: no binary
        return f"{type(err).__name__}: {err}"
    return None


def write_video(frames, path: Path, fps: int = 12) -> Path:
    """An .mp4 (H.264 via imageio-ffmpeg) of frames (N, H, W, 3); exactly N frames.

    macro_block_size=1 keeps sizes that are not multiples of 16 unscaled.
    """
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = to_uint8(frames)
    # yuv420p (what players accept) needs even sizes: pad by edge replication
    H, W = arr.shape[1:3]
    if H % 2 or W % 2:
        arr = np.pad(arr, ((0, 0), (0, H % 2), (0, W % 2), (0, 0)), mode="edge")
    with imageio.get_writer(path, fps=fps, codec="libx264", macro_block_size=1,
                            pixelformat="yuv420p") as w:
        for f in arr:
            w.append_data(f)
    return path


def make_grid(frames, ncols: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile (N, H, W, 3) into one (rows*(H+pad)-pad, cols*(W+pad)-pad, 3) uint8 image (white gaps)."""
    arr = to_uint8(frames)
    N, H, W, _ = arr.shape
    ncols = ncols or math.ceil(math.sqrt(N))
    nrows = math.ceil(N / ncols)
    out = np.full((nrows * (H + pad) - pad, ncols * (W + pad) - pad, 3), 255, np.uint8)
    for i, f in enumerate(arr):
        r, c = divmod(i, ncols)
        out[r * (H + pad) : r * (H + pad) + H, c * (W + pad) : c * (W + pad) + W] = f
    return out


def write_grid(frames, path: Path, ncols: int | None = None, max_views: int = 16) -> Path:
    """PNG grid of at most max_views views, evenly subsampled (a turntable's overview)."""
    import imageio.v2 as imageio

    arr = to_uint8(frames)
    if len(arr) > max_views:
        arr = arr[np.linspace(0, len(arr) - 1, max_views).round().astype(int)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.imwrite(path, make_grid(arr, ncols))
    return path


@torch.no_grad()
def render_frames(representation, views, chunk: int = 8) -> Tensor:
    """rgb of each view, (N, H, W, 3) on the CPU, rendered in eval mode in chunks."""
    was = representation.training
    representation.eval()
    try:
        out = []
        for i in range(0, len(views), chunk):
            out.append(representation.render(views.select(slice(i, i + chunk))).rgb.float().cpu())
        return torch.cat(out)
    finally:
        representation.train(was)


# threestudio's turntable (``n_test_views`` 120 at 30 fps = 4 s); fewer frames on a CPU.
DEFAULT_N_FRAMES = 24
DEFAULT_FPS = 12


def default_turntable(n: int, resolution: int = 64):
    """threestudio's eval camera (elevation 15, distance 1.5, fovy 70) when no views are given."""
    from src.cameras_orbit import make_views, turntable_azimuths

    full = lambda v: torch.full((n,), float(v))  # noqa: E731
    return make_views(turntable_azimuths(n), full(15.0), full(1.5), full(70.0), resolution, resolution)


def write_frames(frames, views, path: Path) -> Path:
    """The turntable's frames, lossless (uint8 (N, H, W, 3) ``rgb``), with their cameras
    (``azimuth_deg``, ``elevation_deg``, ``distance``, ``fovy_deg``, each (N,)): what the metrics
    over finished runs read (src/metrics/frames.py), since the .mp4 is lossy."""
    from src.fileio import atomic_write

    cams = {k: getattr(views, k).detach().float().cpu().numpy()
            for k in ("azimuth_deg", "elevation_deg", "distance", "fovy_deg")}
    arr = to_uint8(frames)
    atomic_write(Path(path), lambda f: np.savez_compressed(f, rgb=arr, **cams))
    return Path(path)


def write_turntables(representation, out_dir: Path, views=None, n_frames: int | None = None,
                     video_resolution: int | None = None, fps: int = DEFAULT_FPS) -> list[Path]:
    """turntable.mp4, views.png and turntable_frames.npz per object (object k > 0 with suffix
    _k) of a 3D representation.

    views: the turntable cameras (the camera sampler's ``eval_views()``); their resolution is
    used unless ``video_resolution`` is set."""
    import logging
    from dataclasses import replace

    if views is None:
        views = default_turntable(n_frames or DEFAULT_N_FRAMES)
    elif n_frames is not None and n_frames != len(views):
        logging.getLogger(__name__).info("export: using the %d given views (n_frames=%d ignored)",
                                         len(views), n_frames)
    if video_resolution:
        views = replace(views, height=int(video_resolution), width=int(video_resolution))
    paths: list[Path] = []
    for k in range(representation.n_objects):
        frames = render_frames(representation, replace(views, index=torch.full_like(views.index, k)))
        sfx = "" if k == 0 else f"_{k}"
        paths.append(write_video(frames, Path(out_dir) / f"turntable{sfx}.mp4", fps))
        paths.append(write_grid(frames, Path(out_dir) / f"views{sfx}.png"))
        paths.append(write_frames(frames, views, Path(out_dir) / f"turntable_frames{sfx}.npz"))
    return paths
