"""Draw the toy figures with one command: ``python scripts/toy_figures.py --out figures``.

- esd_fig3.png:   ESD Fig. 3 / App. B -- target samples vs fitted x = b + A c for SDS, VSD, ESD(lam).
- ssd_fig7.png:   SSD Fig. 7 -- trajectories of theta from [0, 0] under the mode-seeking,
                  mode-disengaging and SSD estimators over the conditional density.
- mog_panel.png:  the 4-mode mixture, K = 64 particles from one point, one panel per method,
                  titled with mode coverage / precision (numbers also in mog_panel.json).
Every panel runs the same configs as ``python -m src.train`` (src.api.compose).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from src.api import compose, train  # noqa: E402
from src.configs import guidance_names
from src.trainer import Trainer, validate  # noqa: E402

METHODS = guidance_names()  # conf/guidance/: every estimator


def density_image(backbone, prompt: str, lim, n: int = 200):
    xs = torch.linspace(lim[0], lim[1], n, dtype=torch.float64)
    ys = torch.linspace(lim[2], lim[3], n, dtype=torch.float64)
    X, Y = torch.meshgrid(xs, ys, indexing="xy")
    pts = torch.stack([X.flatten(), Y.flatten()], 1)
    t = torch.zeros(pts.shape[0], dtype=torch.long)
    emb = backbone.embed(prompt).expand(pts.shape[0], -1)
    with torch.no_grad():
        logp = backbone.log_prob_t(pts, t, emb).reshape(n, n)
    return logp.exp().numpy()


def esd_fig3(out: Path, steps: int | None) -> None:
    runs = [("SDS", ["guidance=sds"]), ("VSD", ["guidance=vsd"])] + [
        (f"ESD lam={lam}", ["guidance=esd", f"guidance.lam={lam}"]) for lam in (0.25, 0.5, 0.75, 1.0)]
    fig, axes = plt.subplots(1, len(runs), figsize=(3 * len(runs), 3.2), sharex=True, sharey=True)
    for ax, (name, ov) in zip(axes, runs):
        extra = [f"trainer.max_steps={steps}"] if steps else []
        m, tr = train(compose(["experiment=esd_toy", "trainer.export=false", *ov, *extra]), tempfile.mkdtemp())
        bb = tr.c.backbone
        target = torch.distributions.MultivariateNormal(bb.means[0], bb.covs[0]).sample((800,))
        fit = tr.c.representation.samples(tr.c.cameras.eval_views())[:800]
        ax.scatter(*target.T, s=3, c="tab:blue", alpha=0.5, label="target")
        ax.scatter(*fit.T, s=3, c="tab:orange", alpha=0.5, label="fitted")
        ax.set_title(f"{name}\ncov err {m['cov_rel_error']:.2f}", fontsize=9)
    axes[0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(out / "esd_fig3.png", dpi=120)
    plt.close(fig)


def trajectory(overrides: list[str]) -> torch.Tensor:
    cfg = compose(overrides)
    validate(cfg)
    tr = Trainer(cfg, Path(tempfile.mkdtemp()))
    path = [tr.c.representation.x.detach().clone()]
    for step in range(int(cfg.trainer.max_steps)):
        tr.train_step(step)
        path.append(tr.c.representation.x.detach().clone())
    return torch.stack(path)  # (steps + 1, K, 2)


def ssd_fig7(out: Path, steps: int | None) -> None:
    base = ["experiment=ssd_toy", "guidance=ssd"]  # 8 particles; particle 0 is drawn
    if steps:
        base.append(f"trainer.max_steps={steps}")
    lim = (-0.5, 3.0, -0.5, 2.0)
    cfg = compose(base)
    from hydra.utils import instantiate

    bb = instantiate(cfg.backbone)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.imshow(density_image(bb, "y", lim), origin="lower", extent=lim, cmap="Greys", aspect="auto")
    for terms, color in (("seeking", "tab:red"), ("disengaging", "tab:blue"), ("ssd", "tab:green")):
        p = trajectory(base + [f"guidance.terms={terms}"])[:, 0]
        ax.plot(p[:, 0], p[:, 1], color=color, lw=1, label=f"{terms}: ends at ({p[-1, 0]:.2f}, {p[-1, 1]:.2f})")
    ax.scatter([1, 2], [1, 1], marker="*", s=150, c="red", zorder=5, label="conditional modes")
    ax.scatter([0], [0], marker="*", s=150, c="gold", zorder=5, label="start")
    ax.set_xlim(lim[0], lim[1])
    ax.set_ylim(lim[2], lim[3])
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title("SSD Fig. 7 toy: trajectories of theta")
    fig.tight_layout()
    fig.savefig(out / "ssd_fig7.png", dpi=120)
    plt.close(fig)


def mog_panel(out: Path, steps: int | None) -> None:
    lim = (-3.5, 3.5, -3.5, 3.5)
    fig, axes = plt.subplots(1, len(METHODS), figsize=(2.6 * len(METHODS), 2.9), sharex=True, sharey=True)
    numbers = {}
    for ax, method in zip(axes, METHODS):
        ov = ["experiment=mog_diversity", f"guidance={method}", "trainer.export=false"]
        if steps:
            ov.append(f"trainer.max_steps={steps}")
        m, tr = train(compose(ov), tempfile.mkdtemp())
        numbers[method] = {k: m[k] for k in ("mode_coverage", "precision")}
        ax.imshow(density_image(tr.c.backbone, "modes", lim), origin="lower", extent=lim, cmap="Greys")
        x = tr.c.representation.x.detach()
        ax.scatter(*x.T, s=6, c="tab:orange")
        ax.set_title(f"{method.upper()}\ncov {m['mode_coverage']:.2f} prec {m['precision']:.2f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "mog_panel.png", dpi=120)
    plt.close(fig)
    (out / "mog_panel.json").write_text(json.dumps(numbers, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="figures")
    ap.add_argument("--steps", type=int, default=None, help="override every run's max_steps (quick look)")
    ap.add_argument("--only", choices=("esd", "ssd", "mog"), default=None)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    for name, fn in (("esd", esd_fig3), ("ssd", ssd_fig7), ("mog", mog_panel)):
        if args.only in (None, name):
            fn(out, args.steps)
            print(f"wrote {out}/{name}*.png")


if __name__ == "__main__":
    main()
