"""The representation interface (DESIGN.md "Interfaces").

``kind`` says which backbones can drive it: "vector" (toy points in R^D, driven by
mog2d), "image" (a learnable image) and "3d" (NeRF, Gaussians), both driven by
image backbones.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from src import checks
from src.cameras import CAM_DIM, ViewBatch


@dataclass
class RenderOutput:
    """What a render hands to the trainer.

    rgb:     (B, D) for "vector" kinds; (B, H, W, 3) in [0, 1] for images and 3D; None for a
             render made directly in backbone space (x below) that has no picture of its own.
    x:       the render already in backbone space, (B, *backbone.x_shape()), or None. When
             set, the trainer uses it instead of ``backbone.encode(rgb)`` (representation=image
             optimizes x itself, pixels or latents, so nothing has to guess what rgb holds).
    opacity / depth: (B, H, W, 1) where the representation has them.
    """

    rgb: Tensor | None
    x: Tensor | None = None
    opacity: Tensor | None = None
    depth: Tensor | None = None
    extras: dict = field(default_factory=dict)


# representation.export.*: a turntable / views render below this many pixels shows nothing (the
# backbones' own floor, src/backbones/shapes.py: MIN_RESOLUTION); a marching-cubes lattice needs
# two points a side; one of MAX_MESH_RESOLUTION^3 float32 densities already takes 4 GiB.
MIN_VIDEO_RESOLUTION, MIN_MESH_RESOLUTION, MAX_MESH_RESOLUTION = 8, 2, 1024
MESH_FORMATS = ("glb", "ply")


def check_export(cfg, key: str, function: str) -> None:
    """``representation.export.*``: keys the export function takes, values in range, checked
    before training rather than after it (the export runs last)."""
    import inspect

    from hydra.utils import get_method

    params = inspect.signature(get_method(function)).parameters
    allowed = sorted(set(params) - {"nerf", "gs", "out_dir", "views"})
    unknown = sorted(str(k) for k in cfg if str(k) not in allowed)
    if unknown:
        raise checks.ConfigError(f"{', '.join(f'{key}.{k}' for k in unknown)}: unknown key(s); "
                                 f"{key} takes: {', '.join(allowed)}")
    if "video_resolution" in cfg:
        checks.number(cfg, "video_resolution", f"{key}.video_resolution", lo=MIN_VIDEO_RESOLUTION,
                      integer=True, optional=True)
    for name in ("fps", "n_frames"):
        if name in cfg:
            checks.number(cfg, name, f"{key}.{name}", lo=1, integer=True, optional=name == "n_frames")
    if "mesh_resolution" in cfg:
        checks.number(cfg, "mesh_resolution", f"{key}.mesh_resolution", lo=MIN_MESH_RESOLUTION,
                      hi=MAX_MESH_RESOLUTION, integer=True)
    if "isosurface_threshold" in cfg and cfg.get("isosurface_threshold") != "auto":
        checks.number(cfg, "isosurface_threshold", f"{key}.isosurface_threshold")
    if "floater_area_fraction" in cfg:
        checks.number(cfg, "floater_area_fraction", f"{key}.floater_area_fraction", lo=0.0, hi=1.0)
    if "formats" in cfg:
        formats = list(cfg.get("formats") or [])
        checks.require(formats and all(f in MESH_FORMATS for f in formats), f"{key}.formats", formats,
                       f"a non-empty list of {', '.join(MESH_FORMATS)}")


class Representation(checks.Configurable, nn.Module):
    """Base class: every attribute a component may ask a representation for."""

    #: which backbones can drive it: "vector", "image" or "3d" (Backbone.supported_representations)
    kind: str = "vector"
    #: K independent objects (particles) optimized together; ``views.index`` picks one
    n_objects: int = 1
    #: width of ``ViewBatch.cam``, the camera features psi is conditioned on
    cam_dim: int = CAM_DIM
    injected = ("backbone",)

    def __init__(self, lr: float = 1e-2):
        super().__init__()
        self.lr = lr

    #: the function ``export`` passes ``export.*`` to (src/export/): its keywords are the keys
    #: allowed under ``representation.export``
    export_function: str | None = None

    @classmethod
    def check_config(cls, cfg, key):
        """Every learning rate (``lr``, ``lr_*``) is a finite number >= 0; ``export.*``."""
        for name in cfg:
            if str(name) == "lr" or str(name).startswith("lr_"):
                checks.number(cfg, name, f"{key}.{name}", lo=0.0, optional=str(name) != "lr")
        if cls.export_function is not None and cfg.get("export") is not None:
            check_export(cfg.export, f"{key}.export", cls.export_function)

    def render(self, views: ViewBatch) -> RenderOutput:
        raise NotImplementedError

    @contextlib.contextmanager
    def preview(self):
        """``with rep.preview():`` renders inside are for the eye only (validation grids, the
        turntable video), never for metrics: a representation may render them a cheaper way
        (NeRF on the CPU: empty space skipped, NeRF.occupied_cells). Default: the same renders."""
        yield

    def param_groups(self) -> list[dict]:
        """Optimizer parameter groups (lr per group)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": self.lr}]

    def regularizers(self, out: RenderOutput, step: int) -> dict[str, Tensor]:
        """Weighted regularization losses added to the distillation loss."""
        return {}

    def update_step(self, step: int) -> None:
        """Per-step schedules of the representation (resolution, occupancy grid...); one over
        the fraction of the run done takes a ``run_length`` argument (src/clock.py)."""

    def lr_scale(self, name: str, step: int) -> float:
        """Factor on the lr of param group ``name`` at ``step`` (a per-group schedule, e.g. the
        Gaussians' position decay); the trainer multiplies it into its lr schedule."""
        return 1.0

    def after_optimizer_step(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        """Called after each optimizer step with that optimizer: changes of the parameter set
        itself (Gaussians' densification and pruning), which edit the optimizer's groups in place."""

    def metrics(self) -> dict[str, float]:
        """Numbers about the result for metrics.json and the step logs (e.g. ``n_gaussians``)."""
        return {}

    def export(self, out_dir: Path, views: ViewBatch | None = None) -> list[Path]:
        """Write the result (points, mesh, video...) under out_dir; return the paths."""
        return []

    def gaussian(self) -> tuple[Tensor, Tensor] | None:
        """(b (D,), A (D, k)) when the renders are x = b + A c of codes c ~ N(0, I_k), i.e. the
        rendered distribution is N(b, A A^T) and psi has a closed form (score_model=analytic,
        which reads it here, detached, at every call); None for every other representation."""
        return None

    @torch.no_grad()
    def samples(self, views: ViewBatch) -> Tensor:
        """Renders used by metrics (no graph)."""
        return self.render(views).rgb
