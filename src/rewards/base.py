"""The reward interface: ``reward(x0, prompt) -> (B,)``, differentiable in x0.

x0 is in backbone space (the guidance decodes nothing itself); a reward that needs
pixels calls ``backbone.decode``. ``reward=none`` builds no object at all.
"""

from __future__ import annotations

from torch import Tensor, nn

from src import checks


class Reward(checks.Configurable, nn.Module):
    injected = ("backbone",)

    def forward(self, x0: Tensor, prompt: str) -> Tensor:
        raise NotImplementedError
