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

    def psi_mix(self, x_t, t, cam):
        """lam e_psi(x_t; y, null) + (1 - lam) e_psi(x_t; y, c), both in one batched call."""
        if self.lam == 0.0:
            return self.psi_eps(x_t, t, cam)
        if self.lam == 1.0:
            return self.psi_eps(x_t, t, None)
        if not self.psi.null_camera_is_zeros:  # closed-form psi: null = the marginal, not c = 0
            return self.lam * self.psi_eps(x_t, t, None) + (1.0 - self.lam) * self.psi_eps(x_t, t, cam)
        B = x_t.shape[0]
        both = self.psi_eps(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([cam, torch.zeros_like(cam)]))
        return self.lam * both[B:] + (1.0 - self.lam) * both[:B]

    def fused_mix(self, x_t, t, emb, null, cam):
        """(e_s(x_t; y_c), the psi_mix term) in ONE UNet call: batch 4B (3B when lam is 0 or 1)."""
        cams = [cam] if self.lam == 0.0 else [None] if self.lam == 1.0 else [cam, None]
        e_c, e_u, e_psi = self.prior_psi_eps(x_t, t, emb, null if self.scale != 1.0 else None, cams)
        mix = e_psi[0] if len(e_psi) == 1 else self.lam * e_psi[1] + (1.0 - self.lam) * e_psi[0]
        return self.backbone.cfg(e_c, e_u, self.scale), mix

    def forward(self, x, views, step, out=None):
        x = x.detach()
        t, eps, x_t = self.perturb(x, step)
        emb, null = self.text(views)
        with torch.no_grad():
            if self.fused:  # fast path
                e, e_psi = self.fused_mix(x_t, t, emb, null, views.cam)
            else:
                e = self.backbone.eps(x_t, t, emb, null, self.scale)
                e_psi = self.psi_mix(x_t, t, views.cam)
        return GuidanceOutput(grad=self.w(t, x) * (e - e_psi), t=t)
