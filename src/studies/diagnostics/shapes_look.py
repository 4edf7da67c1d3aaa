"""A ShapesWorld run beside its truth, and where the exact prior pulls its renders:

    python scripts/shapes_look.py RUN_DIR [--class K] [--prompt "a red sphere, front view"]
        -> RUN_DIR/look.png, printed numbers

- look.png: rows = elevations 0 / 25 / 50 / 75 deg, columns = the run's renders at azimuths
  0 / 90 / 180 / 270, the truth class at the same cameras, and the summed |difference| (x3).
  Printed: rmse per elevation. The truth class is ``--class`` or the run's nearest class.
- with ``--prompt``: at the front camera (azimuth 0, elevation 25), the exact denoised estimate
  x0hat of the noised render under that prompt, as its distance to the truth over the render's
  (mean over 8 noises; > 1: the prior pulls the render away from the truth), t = 100 ... 700.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image

from src import rng
from src.build import build_components, load_checkpoint
from src.cameras_orbit import make_views
from src.diffusion import alpha_sigma

ELEVATIONS = (0.0, 25.0, 50.0, 75.0)
AZIMUTHS = (0.0, 90.0, 180.0, 270.0)
PULL_TIMESTEPS = (100, 300, 500, 700)


def views_at(bb, azimuths, elevation):
    n = len(azimuths)
    return make_views(torch.tensor(azimuths), torch.full((n,), elevation), torch.full((n,), bb.distance),
                      torch.full((n,), bb.fovy_deg), bb.resolution, bb.resolution)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--class", dest="cls", type=int, default=None)
    ap.add_argument("--prompt", default=None)
    a = ap.parse_args(argv)
    cfg = OmegaConf.load(a.run_dir / ".hydra" / "config.yaml")
    c = build_components(cfg, "cpu")
    c.representation.load_state_dict(load_checkpoint(a.run_dir, "cpu")["representation"])
    bb, rep = c.backbone, c.representation
    cls, rows = a.cls, []
    for el in ELEVATIONS:
        v = views_at(bb, AZIMUTHS, el)
        with torch.no_grad():
            run = rep.samples(v)
        if cls is None:
            cls = int(bb.evaluate(run, v, str(cfg.prompt)).get("nearest_class", 0))
        truth = bb.render_classes([cls], v)[0]
        print(f"elevation {el:4.0f}: rmse {float(((run - truth) ** 2).mean().sqrt()):.3f}")
        diff = (run - truth).abs().mul(3).clamp(0, 1).sum(0).clamp(0, 1)
        rows.append(torch.cat([torch.cat(list(run), 1), torch.cat(list(truth), 1), diff], 1))
    img = (torch.cat(rows, 0).clamp(0, 1).numpy() * 255).astype(np.uint8)
    out = a.run_dir / "look.png"
    Image.fromarray(img).resize((img.shape[1] * 4, img.shape[0] * 4), Image.NEAREST).save(out)
    print(f"class {bb.class_name(cls)} -> {out}")
    if a.prompt:
        v = views_at(bb, (0.0,), 25.0)
        with torch.no_grad():
            x = bb.encode(rep.samples(v))
        truth = bb.encode(bb.render_classes([cls], v)[0])
        emb, g = bb.embed(a.prompt)[None], rng.plain(0)
        base = float(((x - truth) ** 2).mean())
        for t in PULL_TIMESTEPS:
            tt = torch.tensor([t])
            alpha, sigma = alpha_sigma(bb.alphas_cumprod, tt)
            ratios = []
            for _ in range(8):
                x_t = alpha * x + sigma * torch.randn(x.shape, generator=g)
                x0 = (x_t - sigma * bb.predict_eps(x_t, tt, emb)) / alpha
                ratios.append(float(((x0 - truth) ** 2).mean()) / base)
            print(f"t {t}: |x0hat - truth|^2 / |render - truth|^2 = {sum(ratios) / len(ratios):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
