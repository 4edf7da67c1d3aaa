"""Where in t SIM and VSD put their step: |E G(t)| and the per-draw noise of G at fixed t.

For a run of a score-model method (psi in its checkpoint) on an analytic backbone, at one camera
and the run's saved state, prints per timestep t the norm of the Monte-Carlo mean of G over K
noise draws ("signal") and the mean norm of a draw's deviation from it ("noise"), for SIM (the
run's own distance, under w = sds and w = sds_alpha, and with psi's input detached: which part of
the noise comes through psi's input Jacobian) and VSD (w = sds) with the same psi, and how far psi's
input Jacobian is from the one of the renders' own score (``jacobian_error``). Adam
normalizes the step per parameter, so what matters is how the signal is shared across t: the
high-noise steps set an object's size and silhouette (conf/tuning/shapes.yaml).

    python -m src.train experiment=shapes_modes guidance=sim seed=6 hydra.run.dir=outputs/sim6 \
        backbone.view_conditioning=prompt    # docs/findings.md's numbers: the view-prompt prior
    python scripts/sim_weighting_profile.py outputs/sim6                   # its last.pt
    python scripts/sim_weighting_profile.py outputs/sim6 --checkpoint ck.pt  # another state
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from hydra.utils import get_class
from omegaconf import OmegaConf

from src import rng
from src.build import build_components
from src.diffusion import add_noise, alpha_sigma, bcast, weighting
from src.guidance.sim import SIM

TIMESTEPS = (20, 50, 100, 200, 400, 600, 800, 950)


def sim_grad(g: SIM, x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, views, psi_input: bool = True) -> torch.Tensor:
    """SIM's G (``SIM.surrogate``, the run's distance and gradient path) at a fixed t, under
    w = sds; psi_input=False detaches psi's input (a diagnostic ablation, not an estimator: biased)."""
    x_ = x.detach().requires_grad_(True)
    x_t = add_noise(x_, eps, g.abar, t)
    e_psi = g.psi_eps(x_t if psi_input else x_t.detach(), t, g.psi_cam(views))
    return weight_sds(g, t, x) * torch.autograd.grad(g.surrogate(x_t, t, eps, views, e_psi), x_)[0]


def vsd_grad(g: SIM, x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, views) -> torch.Tensor:
    """VSD's G with the run's psi (``SIM.vsd_residual``), under w = sds."""
    return weight_sds(g, t, x) * g.vsd_residual(add_noise(x, eps, g.abar, t), t, views)


def weight_sds(g: SIM, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return bcast(weighting("sds", *alpha_sigma(g.abar, t)), like)


def jacobian_error(g: SIM, x: torch.Tensor, t: torch.Tensor, views, gen: torch.Generator) -> float:
    """|J^T v - v / sigma_t| / |v / sigma_t| for psi's e(x_t; c) at x_t ~ q_t(.|x), v a random
    direction: for the renders of one camera (a point mass at x) the ideal psi is
    e = (x_t - alpha_t x) / sigma_t, whose input Jacobian is I / sigma_t; SIM's G runs through
    J^T (a vector-Jacobian product, as in SIM's backward pass)."""
    _, sigma = alpha_sigma(g.abar, t)
    x_t = add_noise(x, torch.randn(x.shape, generator=gen), g.abar, t)
    v = torch.randn(x.shape, generator=gen)
    _, vjp = torch.func.vjp(lambda z: g.psi_eps(z, t, g.psi_cam(views)), x_t)
    (jv,) = vjp(v)
    ideal = v / bcast(sigma, v)
    return float((jv.detach() - ideal).norm() / ideal.norm())


def signal_noise(G: torch.Tensor) -> str:
    """'|mean G| / mean |G - mean G|' over the draws (dim 0)."""
    mean = G.mean(0)
    return f"{float(mean.norm()):.3f} / {float((G - mean).flatten(1).norm(dim=1).mean()):.3f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--checkpoint", type=Path, default=None, help="default: RUN/checkpoints/last.pt")
    ap.add_argument("--draws", type=int, default=16)
    ap.add_argument("--camera-seed", type=int, default=1)
    args = ap.parse_args(argv)
    cfg = OmegaConf.load(args.run / ".hydra" / "config.yaml")
    if not issubclass(get_class(cfg.guidance._target_), SIM):
        raise SystemExit(f"{args.run}: needs a run of guidance=sim (psi and SIM's distance), got {cfg.guidance._target_}")
    c = build_components(cfg, "cpu")
    g = c.guidance
    ck = torch.load(args.checkpoint or args.run / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    c.representation.load_state_dict(ck["representation"])
    g.load_state_dict(ck["guidance"], strict=False)
    views = c.cameras.sample(0, rng.plain(args.camera_seed))
    with torch.no_grad():
        x = g.backbone.encode(c.representation.samples(views))
    gen = rng.plain(0)
    print(f"{args.run} step {ck['step']}: signal / noise of G over {args.draws} draws, one camera")
    print(f"{'t':>5} {'SIM (sds)':>17} {'SIM (sds_alpha)':>17} {'SIM, psi input cut':>19} {'VSD (sds)':>17}"
          f" {'psi Jacobian err':>17}")
    for tv in TIMESTEPS:
        t = torch.full((x.shape[0],), tv)
        eps = [torch.randn(x.shape, generator=gen) for _ in range(args.draws)]
        alpha = float(alpha_sigma(g.abar, t[:1])[0])
        sim = torch.stack([sim_grad(g, x, t, e, views) for e in eps])
        cut = torch.stack([sim_grad(g, x, t, e, views, psi_input=False) for e in eps])
        vsd = torch.stack([vsd_grad(g, x, t, e, views) for e in eps])
        cols = [signal_noise(sim), signal_noise(sim / alpha), signal_noise(cut), signal_noise(vsd)]  # sds_alpha = sds / alpha
        jerr = sum(jacobian_error(g, x, t, views, gen) for _ in range(4)) / 4
        print(f"{tv:5d} " + " ".join(f"{col:>{n}}" for col, n in zip(cols, (17, 17, 19, 17)))
              + f" {jerr:17.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
