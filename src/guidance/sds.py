"""SDS (DreamFusion). docs/methods.md: G = w(t) (e_s(x_t; y_c) - eps), fresh eps each step."""

from __future__ import annotations

import torch

from src.guidance.base import Guidance, GuidanceOutput


class SDS(Guidance):
    def forward(self, x, views, step, out=None):
        x = x.detach()
        t, eps, x_t = self.perturb(x, step)
        emb, null = self.text(views)
        with torch.no_grad():
            e = self.backbone.eps(x_t, t, emb, null, self.scale)
        return GuidanceOutput(grad=self.w(t, x) * (e - eps), t=t)
