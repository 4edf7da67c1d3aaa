"""An analytic reward for the toy backbones: r(x0) = -||x0 - target||^2 / (2 width^2).

Lets Dive3D's reward term (guidance=sim guidance.reward_weight>0) run and be tested
without a reward model download.
"""

from __future__ import annotations

import torch
from torch import Tensor

from src import checks
from src.rewards.base import Reward


class PointReward(Reward):
    def __init__(self, target: list[float], width: float = 1.0, backbone=None):
        super().__init__()
        self.register_buffer("target", torch.tensor(target, dtype=torch.float64))
        self.width = float(width)

    @classmethod
    def check_config(cls, cfg, key):
        checks.number(cfg, "width", f"{key}.width", lo=0.0, lo_open=True)

    @classmethod
    def check_composition(cls, cfg, key, root):
        """A point of the toy backbones' plane: an image backbone has no such point."""
        super().check_composition(cfg, key, root)
        from hydra.utils import get_class

        backbone = get_class(str(root.backbone._target_))
        checks.require("vector" in backbone.supported_representations, key, "point",
                       f"a point reward scores the points of a vector backbone (mog2d, gauss2d, "
                       f"ssd_toy); {backbone.__name__} draws images: use reward=clip or reward=pickscore")
        means = root.backbone.get("means")
        target = list(cfg.get("target") or [])
        if means:
            checks.require(len(target) == len(means[0]), f"{key}.target", target,
                           f"{len(means[0])} numbers, a point of the backbone's space")

    def forward(self, x0: Tensor, prompt: str) -> Tensor:
        d = x0.reshape(x0.shape[0], -1) - self.target.to(x0)
        return -(d * d).sum(1) / (2 * self.width**2)
