"""VSD (ProlificDreamer). docs/methods.md: G = w(t) (e_s(x_t; y_c) - e_psi(x_t; y, c)),
then one denoising score-matching step on psi (ScoreModelGuidance.update)."""

from __future__ import annotations

import torch

from src.guidance.base import GuidanceOutput, ScoreModelGuidance


class VSD(ScoreModelGuidance):
    def forward(self, x, views, step, out=None):
        x = x.detach()
        t, eps, x_t = self.perturb(x, step)
        emb, null = self.text(views)
        with torch.no_grad():
            if self.fused:  # fast path: prior (CFG) and psi in one UNet call of batch 3B
                e_c, e_u, (e_psi,) = self.prior_psi_eps(x_t, t, emb, null if self.scale != 1.0 else None,
                                                        [views.cam])
                e = self.backbone.cfg(e_c, e_u, self.scale)
            else:
                e = self.backbone.eps(x_t, t, emb, null, self.scale)
                e_psi = self.psi_eps(x_t, t, views.cam)
        return GuidanceOutput(grad=self.w(t, x) * (e - e_psi), t=t)
