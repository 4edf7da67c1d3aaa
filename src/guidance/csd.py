"""CSD (Classifier Score Distillation, Yu et al. 2023, arXiv:2310.19415).

h = e(x_t; y_c) - e(x_t; null), the classifier score (its implicit classifier's gradient up to
-sigma_t); G = w(t) h. SSD's mode-disengaging term is this very h (``classifier_score``)."""

from __future__ import annotations

import torch
from torch import Tensor

from src.guidance.base import Guidance, GuidanceOutput


def classifier_score(backbone, x_t: Tensor, t: Tensor, emb: Tensor, null: Tensor) -> tuple[Tensor, Tensor]:
    """(h = e(x_t; y) - e(x_t; null), e(x_t; y)), one batched call, no graph."""
    with torch.no_grad():
        e_c, e_u = backbone.eps_pair(x_t, t, emb, null)
    return e_c - e_u, e_c


class CSD(Guidance):
    def forward(self, x, views, step, out=None):
        x = x.detach()
        t, _, x_t = self.perturb(x, step)
        h, _ = classifier_score(self.backbone, x_t, t, *self.text(views))
        return GuidanceOutput(grad=self.w(t, x) * h, t=t)
