"""The reward interface: ``reward(x0, prompt) -> (B,)``, differentiable in x0.

x0 is in backbone space (the guidance decodes nothing itself); a reward that needs
pixels calls ``backbone.decode``. ``reward=none`` builds no object at all.
"""

from __future__ import annotations

from torch import Tensor, nn

from src import checks


class Reward(checks.Configurable, nn.Module):
    injected = ("backbone",)

    @classmethod
    def check_composition(cls, cfg, key, root):
        """A reward is read by the method's reward term (Dive3D's, guidance=sim): a method
        without one would build it and ignore it."""
        guidance = root.get("guidance") or {}
        checks.require("reward_weight" in guidance, key, cls.__name__,
                       f"guidance={str(guidance.get('_target_')).split('.')[-1]} has no reward term "
                       "(only guidance=sim, with guidance.reward_weight > 0): set reward=none")

    def forward(self, x0: Tensor, prompt: str) -> Tensor:
        raise NotImplementedError
