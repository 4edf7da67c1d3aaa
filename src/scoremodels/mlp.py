"""psi for the 2-D toys: a small time- and camera-conditioned MLP, alone (default) or as a
correction added to the prior (``from_prior: true``, base.py).

Input of the MLP: x_t (D), a sinusoidal embedding of t, and the camera features (one-hot
particle index; zeros = the null camera). As a correction its last layer starts at zero, so psi
starts as the prior's e(x_t; y); trained online by the VSD rule.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from src import checks
from src.scoremodels.base import ScoreModel


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Transformer/DDPM sinusoidal embedding, (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs.to(t.device)[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class MLPScore(ScoreModel):
    """x (B, D) of a vector backbone; camera features of width ``representation.cam_dim``."""

    def __init__(self, backbone, representation, hidden: int = 128, t_embed: int = 32, depth: int = 3,
                 from_prior: bool = False, **kwargs):
        super().__init__(backbone.alphas_cumprod, prior=backbone if from_prior else None, **kwargs)
        (dim,) = backbone.x_shape()
        self.dim, self.cam_dim, self.t_embed = dim, representation.cam_dim, t_embed
        layers: list[nn.Module] = [nn.Linear(dim + t_embed + self.cam_dim, hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        layers.append(nn.Linear(hidden, dim))
        self.net = nn.Sequential(*layers)
        if from_prior:  # the correction starts at zero: psi = prior at step 0
            nn.init.zeros_(self.net[-1].weight)
            nn.init.zeros_(self.net[-1].bias)

    @classmethod
    def check_config(cls, cfg, key):
        super().check_config(cfg, key)
        for name in ("hidden", "t_embed", "depth"):
            checks.number(cfg, name, f"{key}.{name}", lo=1, integer=True)

    def eps(self, x_t: Tensor, t: Tensor, cam: Tensor | None, emb: Tensor | None = None) -> Tensor:
        B = x_t.shape[0]
        if cam is None:
            cam = torch.zeros(B, self.cam_dim, device=x_t.device)
        p = next(self.net.parameters())
        h = torch.cat([x_t.to(p.dtype), timestep_embedding(t, self.t_embed).to(p), cam.to(p)], -1)
        return self.with_prior(self.net(h).to(x_t.dtype), x_t, t, emb)
