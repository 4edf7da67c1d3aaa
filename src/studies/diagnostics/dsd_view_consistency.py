"""Does DSD's 3D premise hold on ShapesWorld? One seed's ODE, conditioned on each view, should end
at views of one object (papers/dsd.txt Sec. 3.3, citing Perp-Neg for Stable Diffusion).

    python scripts/dsd_view_consistency.py [--seeds 0 1 2 3 4 5 6 7] [--prompt "a cone"]
        -> benchmarks/dsd_view_consistency.{json,md}

Per seed (DSD's own eps* and DDIM trajectory code, ``DSD.trajectory`` down to t = 0, at the
ShapesWorld tuning's CFG):
- the plain ODE (Algorithm 3, one ODE per object whatever the camera): the class, elevation and
  azimuth of the data image it ends at. Every view of the object is pulled toward that one image.
- the ODE conditioned on each of the world's data cameras (the prompt's images seen from that
  camera only: the finest view conditioning an exact prior has): the class each ends at, and the
  fraction of cameras that agree with the most frequent class.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from src.api import compose
from src.build import build_components
from src.studies.tables import markdown_table, write_study
from src.sweeps import REPO_ROOT


def endpoints(guidance, cond: torch.Tensor) -> torch.Tensor:
    """x(0) of the DDIM ODE from the run's eps* for each conditioning row (V, N) -> (V, 3, H, W)."""
    guidance.traj_cond, guidance.n_views = cond, cond.shape[0]
    guidance._states.clear()
    guidance._eps.clear()
    bb = guidance.backbone
    like = torch.zeros(1, 3, bb.resolution, bb.resolution)
    return guidance.trajectory(0, like)


def nearest(bb, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Index of the nearest data image among the allowed ones (V, N) for each x (V, ...)."""
    d = torch.cdist(x.flatten(1).double(), bb.data.double())
    return d.masked_fill(~allowed, float("inf")).argmin(1)


def measure(prompt: str, seed: int) -> dict:
    c = build_components(compose(["experiment=shapes_modes", "guidance=dsd", f"seed={seed}", f"prompt={prompt}"]))
    g, bb = c.guidance, c.backbone
    w = bb.embed(prompt)
    plain = nearest(bb, endpoints(g, w[None]), (w > 0)[None])[0]
    n_cams = bb.n_azimuths * bb.n_elevations
    cam_of_image = torch.arange(w.numel()) % n_cams  # images are class-major, camera-minor
    per_cam = torch.stack([w * (cam_of_image == v) for v in range(n_cams)])
    per_cam = per_cam / per_cam.sum(1, keepdim=True)
    classes = bb.class_idx[nearest(bb, endpoints(g, per_cam), per_cam > 0)]
    counts = {bb.class_name(int(k)): int(n) for k, n in zip(*classes.unique(return_counts=True))}
    top = max(counts.values())
    return {
        "seed": seed, "plain_class": bb.class_name(int(bb.class_idx[plain])),
        "plain_elevation": float(bb.elevation_deg[plain]), "plain_azimuth": float(bb.azimuth_deg[plain]),
        "camera_classes": counts, "camera_agreement": top / n_cams,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    ap.add_argument("--prompt", default="a cone")
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "dsd_view_consistency")
    a = ap.parse_args(argv)
    rows = [measure(a.prompt, s) for s in a.seeds]
    lines = [f"# DSD's view consistency on ShapesWorld (`python scripts/dsd_view_consistency.py`, prompt {a.prompt!r})", ""]
    cells = []
    for r in rows:
        cls = ", ".join(f"{k} {n}" for k, n in sorted(r["camera_classes"].items(), key=lambda kv: -kv[1]))
        cells.append([str(r["seed"]), f"{r['plain_class']}, {r['plain_elevation']:.0f}, {r['plain_azimuth']:.1f}",
                      cls, f"{r['camera_agreement']:.2f}"])
    lines += markdown_table(["seed", "plain ODE ends at (class, elevation, azimuth)",
                             "per-camera ODEs: classes (of 64 cameras)", "agreement"], cells)
    write_study(a.out, {"prompt": a.prompt, "rows": rows}, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
