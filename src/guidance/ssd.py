"""SSD (papers/ssd.txt Algorithm 1). docs/methods.md:
h = e(x_t; y) - e(x_t; null) (mode-disengaging: CSD's classifier score, csd.py); E = h if
t > M, else the variance-reduced mode-seeking term e~ = e(x_t; y) - r eps
(r = <e, eps> / ||eps||^2 per sample) rescaled to ||h||. ``terms`` = seeking / disengaging
isolates one term (the paper's Fig. 7 toy)."""

from __future__ import annotations

import torch

from src import checks
from src.diffusion import NUM_TRAIN_TIMESTEPS, bcast
from src.guidance.base import Guidance, GuidanceOutput
from src.guidance.csd import classifier_score

SSD_TERMS = ("ssd", "seeking", "disengaging")
# Guards the rescaling ||h|| / ||e~|| against a vanishing e~.
NORM_EPS = 1e-12


def _norm(v):
    return bcast(v.flatten(1).norm(dim=1), v)


class SSD(Guidance):
    def __init__(self, *args, M: int = 200, terms: str = "ssd", **kwargs):
        super().__init__(*args, **kwargs)
        self.M, self.terms = int(M), terms

    @classmethod
    def check_config(cls, cfg, key):
        super().check_config(cfg, key)
        checks.number(cfg, "M", f"{key}.M", lo=0, hi=NUM_TRAIN_TIMESTEPS, integer=True)
        checks.choice(cfg, "terms", f"{key}.terms", SSD_TERMS)

    def forward(self, x, views, step, out=None):
        x = x.detach()
        t, eps, x_t = self.perturb(x, step)
        h, e_c = classifier_score(self.backbone, x_t, t, *self.text(views))  # mode-disengaging
        if self.terms == "disengaging":
            E = h
        elif self.terms == "seeking":
            E = e_c - eps  # SDS at s = 1
        else:
            r = (e_c * eps).flatten(1).sum(1) / (eps * eps).flatten(1).sum(1)
            e_vr = e_c - bcast(r, x) * eps
            seek = _norm(h) / _norm(e_vr).clamp_min(NORM_EPS) * e_vr
            E = torch.where(bcast(t > self.M, x).bool(), h, seek)
        return GuidanceOutput(grad=self.w(t, x) * E, t=t)
