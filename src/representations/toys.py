"""Toy representations in R^D, driven by the Gaussian-mixture backbones.

- ``Particles``: K free points; the "camera" of particle k is k (IndexSampler).
- ``Affine``: x = b + A c with c ~ N(0, I) (ESD App. B); the rendered distribution is
  exactly N(b, A A^T) (``gaussian``), so psi is closed form (src/scoremodels/analytic.py).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from src import checks
from src.cameras import ViewBatch
from src.representations.base import RenderOutput, Representation

PARTICLE_INITS = ("normal", "point")


class Particles(Representation):
    kind = "vector"

    def __init__(self, n_particles: int = 64, dim: int = 2, init: str = "normal",
                 init_scale: float = 1.0, init_point: list[float] | None = None,
                 lr: float = 1e-2, backbone=None):
        super().__init__(lr=lr)
        if init == "normal":
            x = init_scale * torch.randn(n_particles, dim)
        else:
            x = torch.tensor(init_point, dtype=torch.float32).expand(n_particles, dim).clone()
        self.x = nn.Parameter(x)
        # the "camera" of particle k is its one-hot index (cameras.IndexSampler)
        self.dim, self.cam_dim, self.n_objects = dim, n_particles, n_particles

    @classmethod
    def check_config(cls, cfg, key):
        super().check_config(cfg, key)
        checks.number(cfg, "n_particles", f"{key}.n_particles", lo=1, integer=True)
        dim = checks.number(cfg, "dim", f"{key}.dim", lo=1, integer=True)
        checks.number(cfg, "init_scale", f"{key}.init_scale", lo=0.0)
        if checks.choice(cfg, "init", f"{key}.init", PARTICLE_INITS) == "point":
            p = cfg.get("init_point")
            checks.require(p is not None and len(p) == dim, f"{key}.init_point", p,
                           f"init=point needs a list of {dim} numbers")

    def render(self, views: ViewBatch) -> RenderOutput:
        return RenderOutput(rgb=self.x[views.index.to(self.x.device)])

    def export(self, out_dir: Path, views: ViewBatch | None = None) -> list[Path]:
        path = Path(out_dir) / "particles.pt"
        torch.save(self.x.detach().cpu(), path)
        return [path]


class Affine(Representation):
    kind = "vector"

    def __init__(self, dim: int = 2, code_dim: int | None = None, init_scale: float = 1.0,
                 lr: float = 1e-2, backbone=None):
        super().__init__(lr=lr)
        code_dim = code_dim or dim
        self.b = nn.Parameter(torch.zeros(dim))
        self.A = nn.Parameter(init_scale * torch.eye(dim, code_dim))
        self.dim, self.cam_dim = dim, code_dim  # psi sees the code c as the camera

    def render(self, views: ViewBatch) -> RenderOutput:
        c = views.cam.to(self.A.device, self.A.dtype)
        return RenderOutput(rgb=self.b + c @ self.A.T)

    def gaussian(self) -> tuple[Tensor, Tensor]:
        return self.b, self.A

    @property
    def covariance(self) -> Tensor:
        return self.A @ self.A.T

    def export(self, out_dir: Path, views: ViewBatch | None = None) -> list[Path]:
        path = Path(out_dir) / "affine.pt"
        torch.save({"b": self.b.detach().cpu(), "A": self.A.detach().cpu()}, path)
        return [path]
