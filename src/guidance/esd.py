"""ESD (papers/esd.txt Eq. 9, Algorithm 1). docs/methods.md:
G = w(t) (e_s(x_t; y_c) - lam e_psi(x_t; y, null) - (1 - lam) e_psi(x_t; y, c)).
lam = 0 is VSD exactly; psi is trained with camera dropout p_drop (paper 0.5)."""

from __future__ import annotations

import torch

from src import checks
from src.guidance.base import GuidanceOutput, ScoreModelGuidance


class ESD(ScoreModelGuidance):
    def __init__(self, *args, lam: float = 0.5, **kwargs):
        super().__init__(*args, **kwargs)
        self.lam = float(lam)

    @classmethod
    def check_config(cls, cfg, key):
        super().check_config(cfg, key)
        checks.probability(cfg, "lam", f"{key}.lam")

    def psi_cams(self, views) -> list:
        """psi's cameras of the mix, [c, null]; a term of weight 0 is not computed (lam = 0: VSD's)."""
        return [views.cam] if self.lam == 0.0 else [None] if self.lam == 1.0 else [views.cam, None]

    def psi_mix(self, e_psi: list) -> torch.Tensor:
        """lam e_psi(x_t; y, null) + (1 - lam) e_psi(x_t; y, c), from psi's predictions at psi_cams."""
        if len(e_psi) == 1:
            return e_psi[0]
        e_cam, e_null = e_psi
        return self.lam * e_null + (1.0 - self.lam) * e_cam

    def forward(self, x, views, step, out=None):
        x = x.detach()
        t, eps, x_t = self.perturb(x, step)
        with torch.no_grad():
            e, e_psi = self.prior_and_psi(x_t, t, views, self.psi_cams(views))
        return GuidanceOutput(grad=self.w(t, x) * (e - self.psi_mix(e_psi)), t=t)
