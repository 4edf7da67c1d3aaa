"""The representation interface (DESIGN.md "Interfaces").

``kind`` says which backbones can drive it: "vector" (toy points in R^D, driven by
mog2d), "image" (a learnable image) and "3d" (NeRF, Gaussians), both driven by
image backbones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from src.cameras import ViewBatch


@dataclass
class RenderOutput:
    """rgb: (B, D) for "vector" kinds; (B, H, W, 3) in [0, 1] for images and 3D.
    opacity / depth: (B, H, W, 1) where the representation has them."""

    rgb: Tensor
    opacity: Tensor | None = None
    depth: Tensor | None = None
    extras: dict = field(default_factory=dict)


class Representation(nn.Module):
    kind: str = "vector"

    def __init__(self, lr: float = 1e-2):
        super().__init__()
        self.lr = lr

    def render(self, views: ViewBatch) -> RenderOutput:
        raise NotImplementedError

    def param_groups(self) -> list[dict]:
        """Optimizer parameter groups (lr per group)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": self.lr}]

    def regularizers(self, out: RenderOutput, step: int) -> dict[str, Tensor]:
        """Weighted regularization losses added to the distillation loss."""
        return {}

    def update_step(self, step: int, max_steps: int) -> None:
        """Per-step schedules of the representation (resolution, occupancy grid...)."""

    def export(self, out_dir: Path, views: ViewBatch | None = None) -> list[Path]:
        """Write the result (points, mesh, video...) under out_dir; return the paths."""
        return []

    @torch.no_grad()
    def samples(self, views: ViewBatch) -> Tensor:
        """Renders used by metrics (no graph)."""
        return self.render(views).rgb
