"""``representation=image``: K learnable images in backbone space (the papers' 2D experiments).

The parameter *is* ``x`` (docs/methods.md "Conventions"): pixels in [-1, 1] for pixel
backbones (ShapesWorld), VAE latents (times the scaling factor) for latent backbones
(Stable Diffusion). Optimizing ``x`` itself, not an RGB image that is then encoded,
keeps the 2D exactness results exact (FSD's Proposition 1, DSD*): one SGD step of
size lr moves ``x`` by exactly ``-lr * G``.

``render`` returns ``RenderOutput.x``, the parameter itself, which the trainer uses instead
of ``backbone.encode``: d x / d param = 1 with nothing converted. ``rgb`` holds the picture
for pixel priors ((x + 1) / 2 channel-last, not clamped) and is None for latent priors (a
latent has no picture until decoded; ``samples`` and ``export`` decode).

The shape of x is the backbone's: ``backbone.x_shape(height, width)`` ((3, H, W) for pixel
priors, (C, H/8, W/8) for Stable Diffusion's latents), with H, W from the config or the
backbone's own resolution.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from src import checks, rng
from src.cameras import ViewBatch
from src.modules import hold
from src.representations.base import RenderOutput, Representation

IMAGE_INITS = ("zeros", "noise", "constant")


class Image(Representation):
    kind = "image"

    def __init__(
        self,
        backbone=None,
        n_objects: int = 1,
        height: int | None = None,
        width: int | None = None,
        init: str = "zeros",
        init_value: float | Sequence[float] = 0.0,
        init_scale: float = 1.0,
        init_seed: int | None = None,
        lr: float = 1e-2,
    ):
        super().__init__(lr=lr)
        self.space = backbone.space
        hold(self, "backbone", backbone)  # frozen, owned elsewhere
        C, h, w = backbone.x_shape(height, width)
        K = int(n_objects)
        if init == "zeros":  # x = 0: mid-gray pixels / the zero latent
            x = torch.zeros(K, C, h, w)
        elif init == "noise":  # x ~ N(0, init_scale^2)
            g = rng.generator(init_seed, rng.Stream.INIT) if init_seed is not None else None
            x = init_scale * torch.randn(K, C, h, w, generator=g)
        else:  # constant: a scalar or one value per channel, in backbone space
            v = torch.as_tensor(init_value, dtype=torch.float32).reshape(-1)
            if v.numel() not in (1, C):
                raise ValueError(f"representation.init_value needs 1 or {C} values, got {v.numel()}")
            x = v.view(1, -1, 1, 1).expand(K, C, h, w).clone()
        self.x = nn.Parameter(x)  # (K, C, h, w), backbone space

    @property
    def n_objects(self) -> int:
        return self.x.shape[0]

    @classmethod
    def check_config(cls, cfg, key):
        super().check_config(cfg, key)
        checks.number(cfg, "n_objects", f"{key}.n_objects", lo=1, integer=True)
        for name in ("height", "width"):
            checks.number(cfg, name, f"{key}.{name}", lo=1, integer=True, optional=True)
        checks.choice(cfg, "init", f"{key}.init", IMAGE_INITS)
        checks.number(cfg, "init_scale", f"{key}.init_scale", lo=0.0)

    def render(self, views: ViewBatch) -> RenderOutput:
        x = self.x[views.index.to(self.x.device)]  # (B, C, h, w)
        rgb = None if self.space == "latent" else ((x + 1.0) * 0.5).permute(0, 2, 3, 1)
        return RenderOutput(rgb=rgb, x=x)

    @torch.no_grad()
    def to_rgb(self, x: Tensor) -> Tensor:
        """Backbone space (B, C, h, w) -> displayable (B, H, W, 3) in [0, 1]."""
        if self.space == "latent":
            return self.backbone.decode(x).clamp(0, 1)
        return ((x + 1.0) * 0.5).permute(0, 2, 3, 1).clamp(0, 1)

    @torch.no_grad()
    def samples(self, views: ViewBatch) -> Tensor:
        """Images for metrics, (B, H, W, 3) in [0, 1] (latents are decoded)."""
        return self.to_rgb(self.x[views.index.to(self.x.device)])

    def export(self, out_dir: Path, views: ViewBatch | None = None) -> list[Path]:
        """images.png (grid of the K images) and image_k.png for each."""
        import imageio.v2 as imageio

        from src.export.video import to_uint8, write_grid

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        imgs = self.to_rgb(self.x.detach()).float().cpu()
        paths = [write_grid(imgs, out_dir / "images.png", max_views=64)]
        for k, im in enumerate(to_uint8(imgs)):
            p = out_dir / f"image_{k}.png"
            imageio.imwrite(p, im)
            paths.append(p)
        return paths
