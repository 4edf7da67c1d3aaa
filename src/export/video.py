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


# A validation grid (Trainer.validation_grid): this many views of the eval turntable (one per
# 45 degrees of azimuth), each tile enlarged (nearest neighbour, an integer factor) to at least
# VAL_TILE_PX so that a 32 px render is readable, with its azimuth under it and the step above.
VAL_VIEWS = 8
VAL_TILE_PX = 128
LABEL_PX = 14  # the labels' font size (PIL's built-in font)


def view_labels(views) -> list[str]:
    """A short label per view: its azimuth (and elevation) where the views have them."""
    az, el = getattr(views, "azimuth_deg", None), getattr(views, "elevation_deg", None)
    if az is None:
        return [f"view {i}" for i in range(len(views))]
    return [f"az {float(a):.0f}" + (f", el {float(e):.0f}" if el is not None else "")
            for a, e in zip(az.tolist(), (el.tolist() if el is not None else [None] * len(views)))]


def labelled_grid(frames, labels: list[str], title: str, ncols: int | None = None,
                  tile_px: int = VAL_TILE_PX) -> np.ndarray:
    """make_grid of the frames enlarged to >= tile_px each, a label under each tile and a title
    line above: (H', W', 3) uint8."""
    from PIL import Image, ImageDraw, ImageFont

    arr = to_uint8(frames)
    scale = max(1, math.ceil(tile_px / max(arr.shape[1:3])))
    arr = arr.repeat(scale, axis=1).repeat(scale, axis=2)
    N, H, W, _ = arr.shape
    ncols = ncols or math.ceil(math.sqrt(N))
    line = LABEL_PX + 6
    tiles = np.full((N, H + line, W, 3), 255, np.uint8)
    tiles[:, :H] = arr
    grid = Image.fromarray(make_grid(tiles, ncols, pad=4))
    out = Image.new("RGB", (grid.width, grid.height + line), "white")
    out.paste(grid, (0, line))
    draw, font = ImageDraw.Draw(out), ImageFont.load_default(size=LABEL_PX)
    draw.text((2, 2), title, fill="black", font=font)
    for i, text in enumerate(labels):
        r, c = divmod(i, ncols)
        draw.text((c * (W + 4) + 2, line + r * (H + line + 4) + H + 2), text, fill="black", font=font)
    return np.asarray(out)


@torch.no_grad()
def render_frames(representation, views, chunk: int = 8, preview: bool = False) -> Tensor:
    """rgb of each view, (N, H, W, 3) on the CPU, rendered in eval mode in chunks; ``preview``:
    for the eye only, never for metrics (Representation.preview)."""
    from contextlib import nullcontext

    was = representation.training
    representation.eval()
    try:
        out = []
        with representation.preview() if preview else nullcontext():
            for i in range(0, len(views), chunk):
                out.append(representation.render(views.select(slice(i, i + chunk))).rgb.float().cpu())
        return torch.cat(out)
    finally:
        representation.train(was)


# threestudio's turntable (``n_test_views`` 120 at 30 fps = 4 s); fewer frames on a CPU.
DEFAULT_N_FRAMES = 24
DEFAULT_FPS = 12
# The turntable video has at least this many frames (issue 30: 24 frames read as a slide show;
# threestudio renders 120), rendered as previews (Representation.preview).
MIN_TURNTABLE_FRAMES = 60


def default_turntable(n: int, resolution: int = 64):
    """threestudio's eval camera (elevation 15, distance 1.5, fovy 70) when no views are given."""
    from src.cameras_orbit import make_views, turntable_azimuths

    full = lambda v: torch.full((n,), float(v))  # noqa: E731
    return make_views(turntable_azimuths(n), full(15.0), full(1.5), full(70.0), resolution, resolution)


def dense_turntable(views, n_frames: int | None = None):
    """A turntable of ``n_frames`` (default: max(MIN_TURNTABLE_FRAMES, len(views))) views at the
    elevation, distance, fovy, resolution and object of ``views``, which must be a turntable
    themselves (OrbitSampler's eval_views: constant elevation, distance and fovy, azimuths
    turntable_azimuths(n)); else None (then the views make the video themselves)."""
    from src.cameras_orbit import make_views, turntable_azimuths

    n = len(views)
    if views.azimuth_deg is None or views.c2w is None or n == 0:
        return None
    same = {name: getattr(views, name) for name in ("elevation_deg", "distance", "fovy_deg")}
    if any(v is None or not bool((v == v[0]).all()) for v in same.values()):
        return None
    if not (torch.equal(views.index, views.index[:1].expand(n))
            and torch.equal(views.azimuth_deg.float().cpu(), turntable_azimuths(n))):
        return None
    m = int(n_frames) if n_frames else max(MIN_TURNTABLE_FRAMES, n)
    full = lambda v: torch.full((m,), float(v[0]))  # noqa: E731
    return make_views(turntable_azimuths(m), *(full(v) for v in same.values()), views.height, views.width,
                      views.index[:1].expand(m).clone().cpu())


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

    views: the evaluation cameras (the camera sampler's ``eval_views()``), whose renders go to
    views.png and turntable_frames.npz (what the metrics read); the video turns at their
    elevation with ``n_frames`` frames (default: at least MIN_TURNTABLE_FRAMES; dense_turntable),
    rendered as previews (Representation.preview: a NeRF on the CPU skips empty space). Views
    that are no turntable make the video themselves. Their resolution is used unless
    ``video_resolution``."""
    from dataclasses import replace

    if views is None:
        views = default_turntable(n_frames or DEFAULT_N_FRAMES)
    if video_resolution:
        views = replace(views, height=int(video_resolution), width=int(video_resolution))
    dense = dense_turntable(views, n_frames)
    paths: list[Path] = []
    for obj in range(representation.n_objects):
        at = lambda v, obj=obj: replace(v, index=torch.full_like(v.index, obj))  # noqa: E731
        frames = render_frames(representation, at(views))
        video = frames if dense is None else render_frames(representation, at(dense), preview=True)
        sfx = "" if obj == 0 else f"_{obj}"
        paths.append(write_video(video, Path(out_dir) / f"turntable{sfx}.mp4", fps))
        paths.append(write_grid(frames, Path(out_dir) / f"views{sfx}.png"))
        paths.append(write_frames(frames, views, Path(out_dir) / f"turntable_frames{sfx}.npz"))
    return paths
