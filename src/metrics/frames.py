"""What a run's metrics are computed from: its evaluation renders, read back from its export.

- 3D runs: ``export/turntable_frames.npz`` (src/export/video.py: the turntable's frames,
  lossless uint8, with their cameras), else the frames of ``export/turntable.mp4`` (older
  runs; H.264 is lossy, so LPIPS-D between such runs is not exactly 0 for identical renders);
- 2D runs (``representation=image``): ``export/image_<k>.png``, one per object.

Group metrics compare runs "at the same cameras": ``same_cameras`` checks it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

FRAMES_NPZ = "turntable_frames.npz"
CAMERA_KEYS = ("azimuth_deg", "elevation_deg", "distance", "fovy_deg")


@dataclass
class Frames:
    rgb: np.ndarray  # (V, H, W, 3) uint8
    cameras: dict[str, np.ndarray] | None  # CAMERA_KEYS -> (V,), None where unknown
    source: Path

    def as_float(self):
        """(V, H, W, 3) float32 torch tensor in [0, 1]."""
        import torch

        return torch.from_numpy(self.rgb.astype(np.float32) / 255.0)


def run_frames(run_dir: Path) -> Frames | None:
    """The run's evaluation renders, or None when its export holds none."""
    export = Path(run_dir) / "export"
    npz = export / FRAMES_NPZ
    if npz.exists():
        with np.load(npz) as z:
            cams = {k: z[k] for k in CAMERA_KEYS if k in z.files} or None
            return Frames(z["rgb"], cams, npz)
    images = sorted(export.glob("image_*.png"), key=lambda p: int(p.stem.split("_")[1]))
    if images:
        import imageio.v2 as imageio

        return Frames(np.stack([np.asarray(imageio.imread(p))[..., :3] for p in images]), None, images[0])
    video = export / "turntable.mp4"
    if video.exists():
        import imageio.v2 as imageio

        return Frames(np.stack([np.asarray(f)[..., :3] for f in imageio.mimread(video, memtest=False)]),
                      None, video)
    return None


def same_cameras(frames: list[Frames]) -> bool:
    """Do the runs' renders show the same cameras (count, size and, where recorded, poses)?"""
    if len({f.rgb.shape for f in frames}) > 1:
        return False
    cams = [f.cameras for f in frames if f.cameras is not None]
    return all(np.allclose(c[k], cams[0][k], atol=1e-4) for c in cams[1:] for k in CAMERA_KEYS
               if k in c and k in cams[0])
