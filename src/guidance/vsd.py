"""VSD (ProlificDreamer). docs/methods.md: G = w(t) (e_s(x_t; y_c) - e_psi(x_t; y, c)),
then one denoising score-matching step on psi (ScoreModelGuidance.update)."""

from __future__ import annotations

import torch

from src.guidance.base import GuidanceOutput, ScoreModelGuidance


class VSD(ScoreModelGuidance):
    def forward(self, x, views, step, out=None):
        x = x.detach()
        t, eps, x_t = self.perturb(x, step)
        with torch.no_grad():
            e, (e_psi,) = self.prior_and_psi(x_t, t, views, [views.cam])
        return GuidanceOutput(grad=self.w(t, x) * (e - e_psi), t=t)
