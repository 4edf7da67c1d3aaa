"""Re-export a run from its checkpoint:

    python -m src.reexport RUN_DIR [--out DIR] [--n-frames N] [--video-resolution R] [--device cpu]

Reads ``RUN_DIR/.hydra/config.yaml`` (the composed config) and
``RUN_DIR/checkpoints/last.pt``, rebuilds the parts with ``src.build.build_components`` (as
the trainer does) and calls ``representation.export(RUN_DIR/export, eval views)``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from omegaconf import OmegaConf

from src.build import CHECKPOINT, build_components, load_checkpoint


def reexport(run_dir: Path, out_dir: Path | None = None, n_frames: int | None = None,
             video_resolution: int | None = None, device: str = "cpu") -> list[Path]:
    run_dir = Path(run_dir)
    cfg_path, ckpt_path = run_dir / ".hydra" / "config.yaml", run_dir / CHECKPOINT
    for p in (cfg_path, ckpt_path):
        if not p.exists():
            raise FileNotFoundError(f"{p} not found: is {run_dir} a run directory of src.train?")
    cfg = OmegaConf.load(cfg_path)
    c = build_components(cfg, device)
    state = load_checkpoint(run_dir, device)
    c.representation.load_state_dict(state["representation"])
    rep = c.representation
    views = c.cameras.eval_views()  # the metrics' views (turntable_frames.npz) stay the run's
    if n_frames:  # the video's frames (src/export/video.py: write_turntables)
        rep.export_cfg = {**getattr(rep, "export_cfg", {}), "n_frames": int(n_frames)}
    if video_resolution:
        views = replace(views, height=int(video_resolution), width=int(video_resolution))
    out = Path(out_dir) if out_dir else run_dir / "export"
    return rep.export(out, views)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m src.reexport", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--out", type=Path, default=None, help="default: RUN_DIR/export")
    ap.add_argument("--n-frames", type=int, default=None, help="turntable video frames (default: 60, or n_eval_views if more)")
    ap.add_argument("--video-resolution", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args(argv)
    try:
        paths = reexport(a.run_dir, a.out, a.n_frames, a.video_resolution, a.device)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
