"""Views: what the trainer samples each step and hands to render, guidance and psi.

A ``ViewBatch`` carries, per sample, the index of the object rendered (particle /
representation index), the view-prompt index (docs/methods.md: front / side / back /
overhead, from azimuth and elevation as threestudio assigns them), the camera
features psi is conditioned on, and for 3D the camera itself.

Samplers (the ``camera`` config group) share one signature,
``sample(step, generator) -> ViewBatch`` and ``eval_views() -> ViewBatch``:

- ``IndexSampler``: the toy particles; the "camera" of particle k is k itself.
- ``GaussianCodeSampler``: the affine toy's ``c ~ N(0, I)`` (ESD App. B).
- ``OrbitSampler`` (3D, see ``src/cameras_orbit.py``): threestudio-style orbit cameras.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

from src import checks, rng

# View-dependent prompting (DreamFusion / threestudio): suffixes in prompt order.
VIEW_NAMES = ("front", "side", "back", "overhead")
# threestudio's defaults: front within +-45 deg of azimuth 0, back within +-45 deg of 180,
# overhead above 60 deg elevation, side otherwise.
FRONT_HALF_ANGLE_DEG = 45.0
BACK_HALF_ANGLE_DEG = 45.0
OVERHEAD_ELEVATION_DEG = 60.0
# Camera features of a 3D view: the flattened 4x4 camera-to-world matrix (threestudio's VSD).
CAM_DIM = 16


def wrap_azimuth(azimuth_deg: Tensor) -> Tensor:
    """Azimuths in degrees wrapped to [-180, 180): 0 is the front."""
    return torch.remainder(azimuth_deg + 180.0, 360.0) - 180.0


def view_prompt_index(azimuth_deg: Tensor, elevation_deg: Tensor) -> Tensor:
    """Index into VIEW_NAMES for each camera; (B,), (B,) -> (B,) long."""
    az = wrap_azimuth(azimuth_deg)
    idx = torch.full_like(az, VIEW_NAMES.index("side"), dtype=torch.long)
    idx[az.abs() <= FRONT_HALF_ANGLE_DEG] = VIEW_NAMES.index("front")
    idx[az.abs() >= 180.0 - BACK_HALF_ANGLE_DEG] = VIEW_NAMES.index("back")
    idx[elevation_deg > OVERHEAD_ELEVATION_DEG] = VIEW_NAMES.index("overhead")
    return idx


@dataclass
class ViewBatch:
    """One batch of views. B = batch size; every tensor is indexed by sample first."""

    index: Tensor  # (B,) long: which object / particle is rendered
    view_idx: Tensor  # (B,) long: view-prompt index into Conditioning.cond (0 if not view-dependent)
    cam: Tensor  # (B, D_cam) float: camera features for psi (CAM_DIM = 16: flattened c2w in 3D)
    c2w: Tensor | None = None  # (B, 4, 4) camera-to-world, OpenGL convention (-z forward)
    fovy_deg: Tensor | None = None  # (B,)
    azimuth_deg: Tensor | None = None  # (B,)
    elevation_deg: Tensor | None = None  # (B,)
    distance: Tensor | None = None  # (B,)
    height: int | None = None
    width: int | None = None

    def __len__(self) -> int:
        return self.index.shape[0]

    def select(self, index: Tensor | slice) -> ViewBatch:
        """The views at ``index`` (a (B',) long tensor or a slice), every per-sample field."""
        picked = {f.name: getattr(self, f.name)[index] for f in fields(self)
                  if isinstance(getattr(self, f.name), Tensor)}
        return replace(self, **picked)

    def to(self, device) -> ViewBatch:
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }
        return replace(self, **moved)


class IndexSampler(checks.Configurable):
    """Particles: each step renders ``batch_size`` of the ``n`` particles (all when None)."""

    def __init__(self, n: int, batch_size: int | None = None):
        self.n = n
        self.batch_size = n if batch_size is None else batch_size

    @classmethod
    def check_config(cls, cfg, key):
        n = checks.number(cfg, "n", f"{key}.n", lo=1, integer=True)
        checks.number(cfg, "batch_size", f"{key}.batch_size", lo=1, hi=n, integer=True, optional=True)

    def _batch(self, index: Tensor) -> ViewBatch:
        cam = torch.nn.functional.one_hot(index, self.n).float()
        return ViewBatch(index=index, view_idx=torch.zeros_like(index), cam=cam)

    def sample(self, step: int, generator: torch.Generator) -> ViewBatch:
        if self.batch_size == self.n:
            index = torch.arange(self.n)
        else:
            index = torch.randperm(self.n, generator=generator)[: self.batch_size]
        return self._batch(index)

    def eval_views(self) -> ViewBatch:
        return self._batch(torch.arange(self.n))


class GaussianCodeSampler(checks.Configurable):
    """The affine toy: c ~ N(0, I_dim) per sample; psi is conditioned on c itself."""

    def __init__(self, dim: int, batch_size: int = 256, n_eval: int = 4096):
        self.dim, self.batch_size, self.n_eval = dim, batch_size, n_eval

    @classmethod
    def check_config(cls, cfg, key):
        for name in ("dim", "batch_size", "n_eval"):
            checks.number(cfg, name, f"{key}.{name}", lo=1, integer=True)

    def _batch(self, c: Tensor) -> ViewBatch:
        zeros = torch.zeros(c.shape[0], dtype=torch.long)
        return ViewBatch(index=zeros, view_idx=zeros, cam=c)

    def sample(self, step: int, generator: torch.Generator) -> ViewBatch:
        return self._batch(torch.randn(self.batch_size, self.dim, generator=generator))

    def eval_views(self) -> ViewBatch:
        g = rng.generator(0, rng.Stream.EVAL)  # the same codes for every run and seed
        return self._batch(torch.randn(self.n_eval, self.dim, generator=g))
