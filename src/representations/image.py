"""``representation=image``: K learnable images in backbone space (the papers' 2D experiments).

The parameter *is* ``x`` (METHODS.md "Conventions"): pixels in [-1, 1] for pixel
backbones (ShapesWorld), VAE latents (times the scaling factor) for latent backbones
(Stable Diffusion). Optimizing ``x`` itself, not an RGB image that is then encoded,
keeps the 2D exactness results exact (FSD's Proposition 1, DSD*): one SGD step of
size lr moves ``x`` by exactly ``-lr * G``.

How the trainer's ``x = backbone.encode(out.rgb)`` returns the parameter unchanged:

- pixel backbones: ``rgb = (x + 1) / 2`` channel-last, and ``encode(rgb) = 2 rgb - 1``
  gives ``x`` back with d x / d param = 1 (rgb is *not* clamped to [0, 1] for that
  reason; ``samples`` clamps for metrics);
- latent backbones: ``rgb`` is the latent itself channel-last, (B, h, w, C) with
  C = ``backbone.latent_channels`` (4 for SD): ``StableDiffusion.encode`` passes a
  render with ``latent_channels`` channels through without the VAE ("latent rendering").

Either way ``out.extras["x"]`` holds the backbone-space tensor (B, C, h, w) for code
that wants it without going through ``encode``.

The shape comes from the backbone: ``backbone.x_shape(height, width)`` when it defines
one, else (3, H, W) for ``space == "pixel"`` and (latent_channels, H/f, W/f) for
``space == "latent"`` (f = ``backbone.vae_scale_factor``, default 8), with H, W from
the config or ``backbone.resolution``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from src.cameras import ViewBatch
from src.representations.base import RenderOutput, Representation

# SD's VAE downsamples by 8 (2 ** (len(block_out_channels) - 1) with 4 blocks).
DEFAULT_VAE_SCALE_FACTOR = 8
DEFAULT_RESOLUTION = 64


def backbone_x_shape(backbone, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
    """(C, h, w) of one image in the backbone's space (see the module docstring)."""
    res = getattr(backbone, "resolution", None) or DEFAULT_RESOLUTION
    H, W = int(height or res), int(width or height or res)
    if hasattr(backbone, "x_shape"):
        return tuple(int(v) for v in backbone.x_shape(H, W))
    space = getattr(backbone, "space", "pixel")
    if space == "pixel":
        return (3, H, W)
    if space == "latent":
        f = int(getattr(backbone, "vae_scale_factor", DEFAULT_VAE_SCALE_FACTOR))
        return (int(getattr(backbone, "latent_channels", 4)), H // f, W // f)
    raise ValueError(f"representation=image needs a pixel or latent backbone, got space={space!r}")


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
        self.space = getattr(backbone, "space", "pixel")
        self.backbone_ref = [backbone]  # not a submodule: the backbone is frozen and owned elsewhere
        C, h, w = backbone_x_shape(backbone, height, width)
        K = int(n_objects)
        if init == "zeros":  # x = 0: mid-gray pixels / the zero latent
            x = torch.zeros(K, C, h, w)
        elif init == "noise":  # x ~ N(0, init_scale^2)
            g = torch.Generator().manual_seed(init_seed) if init_seed is not None else None
            x = init_scale * torch.randn(K, C, h, w, generator=g)
        elif init == "constant":  # a scalar or one value per channel, in backbone space
            v = torch.as_tensor(init_value, dtype=torch.float32).reshape(-1)
            if v.numel() not in (1, C):
                raise ValueError(f"init_value needs 1 or {C} values, got {v.numel()}")
            x = v.view(1, -1, 1, 1).expand(K, C, h, w).clone()
        else:
            raise ValueError(f"representation.init must be zeros | noise | constant, got {init!r}")
        self.x = nn.Parameter(x)  # (K, C, h, w), backbone space

    @property
    def n_objects(self) -> int:
        return self.x.shape[0]

    def render(self, views: ViewBatch) -> RenderOutput:
        x = self.x[views.index.to(self.x.device)]  # (B, C, h, w)
        if self.space == "latent":
            rgb = x.permute(0, 2, 3, 1)  # (B, h, w, C): a latent render, encode passes it through
        else:
            rgb = ((x + 1.0) * 0.5).permute(0, 2, 3, 1)  # (B, H, W, 3), encode(rgb) == x
        return RenderOutput(rgb=rgb, extras={"x": x})

    @torch.no_grad()
    def to_rgb(self, x: Tensor) -> Tensor:
        """Backbone space (B, C, h, w) -> displayable (B, H, W, 3) in [0, 1]."""
        if self.space == "latent":
            return self.backbone_ref[0].decode(x).clamp(0, 1)
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
