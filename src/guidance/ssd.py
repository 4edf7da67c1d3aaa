"""SSD (papers/ssd.txt Algorithm 1). METHODS.md:
h = e(x_t; y) - e(x_t; null); E = h if t > M, else the variance-reduced mode-seeking
term e~ = e(x_t; y) - r eps (r = <e, eps> / ||eps||^2 per sample) rescaled to ||h||.
``terms`` = seeking / disengaging isolates one term (the paper's Fig. 7 toy)."""

from __future__ import annotations

import torch

from src.guidance.base import Guidance, GuidanceOutput

SSD_TERMS = ("ssd", "seeking", "disengaging")
# Guards the rescaling ||h|| / ||e~|| against a vanishing e~.
NORM_EPS = 1e-12


def _norm(v):
    return v.flatten(1).norm(dim=1).reshape(-1, *([1] * (v.ndim - 1)))


class SSD(Guidance):
    def __init__(self, *args, M: int = 200, terms: str = "ssd", **kwargs):
        if terms not in SSD_TERMS:
            raise ValueError(f"guidance.terms={terms!r} is unknown; valid: {', '.join(SSD_TERMS)}")
        super().__init__(*args, **kwargs)
        if not 0 <= M <= self.backbone.num_timesteps:
            raise ValueError(f"guidance.M must be in [0, {self.backbone.num_timesteps}], got {M}")
        self.M, self.terms = int(M), terms

    def forward(self, x, views, step, out=None):
        x = x.detach()
        t, eps, x_t = self.perturb(x, step)
        emb, null = self.text(views)
        with torch.no_grad():
            e_c, e_u = self.backbone.eps_pair(x_t, t, emb, null)
        h = e_c - e_u  # mode-disengaging
        if self.terms == "disengaging":
            E = h
        elif self.terms == "seeking":
            E = e_c - eps  # SDS at s = 1
        else:
            r = (e_c * eps).flatten(1).sum(1) / (eps * eps).flatten(1).sum(1)
            e_vr = e_c - r.reshape(-1, *([1] * (x.ndim - 1))) * eps
            seek = _norm(h) / _norm(e_vr).clamp_min(NORM_EPS) * e_vr
            high = (t > self.M).reshape(-1, *([1] * (x.ndim - 1)))
            E = torch.where(high, h, seek)
        return GuidanceOutput(grad=self.w(t, x) * E, t=t)
