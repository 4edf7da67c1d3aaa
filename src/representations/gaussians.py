"""``representation=gaussians``: 3D Gaussian splatting (Kerbl et al. 2023) through gsplat.

Parameters of each of the N Gaussians (per object, ``n_objects`` = K):
``means`` (K, N, 3), ``log_scales`` (K, N, 3), ``quats`` (K, N, 4) (wxyz, normalized when
used), ``opacity_logits`` (K, N) and ``color_logits`` (K, N, 3); the activations are
3DGS's: exp for scales, sigmoid for opacity. Color is view-independent RGB = sigmoid(logit)
(SH degree 0: 3DGS stores the DC coefficient, rgb = 0.5 + C0 * dc; a sigmoid keeps rgb in
[0, 1] and moves rgb per Adam step about as much: 0.25 * lr vs C0 * lr at rgb = 0.5).

Init (threestudio-3dgs, ``GaussianBaseModel.configure`` with no point cloud): ``n_gaussians``
points uniform in a ball of radius ``init_radius`` (default 0.5: the NeRF's density blob
here; threestudio uses 0.8 at camera distance 2.5), scales = the 3-NN distance (3DGS's
``distCUDA2``), identity rotations, opacity ``opacity_init`` (threestudio-3dgs's SDS
config: 0.8), gray color (threestudio: rgb 0.5 + U(0, 1/255) * C0).

Rendering (splat.py): ``gsplat.rasterization`` on CUDA (``renderer: auto | gsplat``), the
pure-torch reference on the CPU (``renderer: auto | torch``); both return premultiplied
rgb and alpha, and the background model (as the NeRF's, ``backbone.background``) fills
1 - alpha. ``depth`` is the expected camera-z depth of the opaque part (sum w z / alpha).

Not implemented: densification / pruning (3DGS's adaptive density control) and the
position learning-rate decay (threestudio-3dgs: 1e-3 -> 2e-5 over 1000 steps): the
trainer owns the optimizer and one warm-up LambdaLR for all groups, so both need a
trainer hook; N stays fixed and every lr is constant.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn

from src import checks, rng
from src.cameras import ViewBatch
from src.cameras_orbit import get_rays
from src.representations import splat
from src.representations.base import RenderOutput, Representation
from src.representations.fields import Background

# threestudio-3dgs configs/gaussian_splatting.yaml (geometry):
TS_INIT_NUM_PTS = 4096
TS_OPACITY_INIT = 0.8
TS_LR_POSITION = 1e-3  # position_lr_init (decays to 2e-5 there; constant here)
TS_LR_SCALING = 5e-3  # scaling_lr / scale_lr_init
TS_LR_ROTATION = 5e-3  # rotation_lr (the 3DGS paper: 1e-3)
TS_LR_OPACITY = 5e-2  # opacity_lr
TS_LR_FEATURE = 1e-2  # feature_lr (SH DC)
SH_C0 = 0.28209479177387814


def inverse_sigmoid(x: Tensor) -> Tensor:
    return torch.log(x / (1.0 - x))


def random_ball(n: int, radius: float, generator: torch.Generator | None = None) -> Tensor:
    """n points uniform in a ball (threestudio-3dgs: phi, cos theta uniform, r = R cbrt(u))."""
    u = torch.rand(n, 3, generator=generator)
    phi, cos_t = u[:, 0] * 2 * math.pi, u[:, 1] * 2 - 1
    sin_t = (1 - cos_t**2).clamp_min(0).sqrt()
    r = radius * u[:, 2].pow(1.0 / 3.0)
    return torch.stack([r * sin_t * phi.cos(), r * sin_t * phi.sin(), r * cos_t], -1)


RENDERERS = ("auto", "gsplat", "torch")


class Gaussians(Representation):
    kind = "3d"

    def __init__(
        self,
        backbone=None,
        n_objects: int = 1,
        n_gaussians: int = TS_INIT_NUM_PTS,
        init_radius: float = 0.5,
        opacity_init: float = TS_OPACITY_INIT,
        color_init: float = 0.5,
        background: dict | None = None,
        renderer: str = "auto",
        eps2d: float = splat.EPS2D,
        near_plane: float = splat.NEAR_PLANE,
        tile_size: int = splat.TILE_SIZE,
        lambda_position: float = 0.0,
        lambda_opacity: float = 0.0,
        lambda_scales: float = 0.0,
        lambda_sparsity: float = 0.0,
        lambda_opaque: float = 0.0,
        lr: float = TS_LR_POSITION,
        lr_scales: float = TS_LR_SCALING,
        lr_quats: float = TS_LR_ROTATION,
        lr_opacities: float = TS_LR_OPACITY,
        lr_colors: float = TS_LR_FEATURE,
        lr_background: float = 1e-3,
        export: dict | None = None,
        init_seed: int | None = None,
    ):
        super().__init__(lr=lr)
        self.n_objects, self.n_gaussians = int(n_objects), int(n_gaussians)
        K, N = self.n_objects, self.n_gaussians
        g = rng.generator(int(init_seed), rng.Stream.INIT) if init_seed is not None else None
        means = torch.stack([random_ball(N, init_radius, g) for _ in range(K)])  # (K, N, 3)
        scales = torch.stack([splat.knn_scale(m) for m in means])  # (K, N)
        quats = torch.zeros(K, N, 4)
        quats[..., 0] = 1.0
        rgb = color_init + torch.rand(K, N, 3, generator=g) / 255.0 * SH_C0  # threestudio's jitter
        self.means = nn.Parameter(means)
        self.log_scales = nn.Parameter(scales.log()[..., None].repeat(1, 1, 3))
        self.quats = nn.Parameter(quats)
        self.opacity_logits = nn.Parameter(inverse_sigmoid(torch.full((K, N), float(opacity_init))))
        self.color_logits = nn.Parameter(inverse_sigmoid(rgb.clamp(1e-4, 1 - 1e-4)))
        bg = dict(background or {})
        self.background = Background(bg.pop("kind", "learned"), **bg)
        self.renderer, self.eps2d = renderer, float(eps2d)
        self.near_plane, self.tile_size = float(near_plane), int(tile_size)
        self.lambda_position, self.lambda_opacity = float(lambda_position), float(lambda_opacity)
        self.lambda_scales = float(lambda_scales)
        self.lambda_sparsity, self.lambda_opaque = float(lambda_sparsity), float(lambda_opaque)
        self.lrs = {"means": lr, "log_scales": lr_scales, "quats": lr_quats,
                    "opacity_logits": lr_opacities, "color_logits": lr_colors}
        self.lr_background = lr_background
        self.export_cfg = dict(export or {})

    @classmethod
    def check_config(cls, cfg, key):
        super().check_config(cfg, key)
        for name in ("n_objects", "n_gaussians", "tile_size"):
            checks.number(cfg, name, f"{key}.{name}", lo=1, integer=True)
        for name in ("opacity_init", "color_init"):
            checks.number(cfg, name, f"{key}.{name}", lo=0.0, hi=1.0, lo_open=True, hi_open=True)
        checks.number(cfg, "init_radius", f"{key}.init_radius", lo=0.0, lo_open=True)
        checks.choice(cfg, "renderer", f"{key}.renderer", RENDERERS)
        for name in ("lambda_position", "lambda_opacity", "lambda_scales", "lambda_sparsity",
                     "lambda_opaque", "eps2d", "near_plane"):
            checks.number(cfg, name, f"{key}.{name}", lo=0.0)

    # --- activations ---------------------------------------------------------------------
    @property
    def scales(self) -> Tensor:
        return self.log_scales.exp()

    @property
    def opacities(self) -> Tensor:
        return torch.sigmoid(self.opacity_logits)

    @property
    def colors(self) -> Tensor:
        return torch.sigmoid(self.color_logits)

    # --- optimization ----------------------------------------------------------------------
    def param_groups(self) -> list[dict]:
        """One group per attribute, threestudio-3dgs's learning rates (module docstring)."""
        groups = [{"params": [getattr(self, name)], "lr": lr, "name": name} for name, lr in self.lrs.items()]
        bg = [p for p in self.background.parameters() if p.requires_grad]
        if bg:
            groups.append({"params": bg, "lr": self.lr_background, "name": "background"})
        return groups

    def regularizers(self, out: RenderOutput, step: int) -> dict[str, Tensor]:
        """threestudio-3dgs's geometry terms (its system's ``loss_position`` mean |x|,
        ``loss_opacity`` sum_i |s_i| o_i with |s| detached, ``loss_scales`` sum of scales;
        weighted 1.0 there against lambda_sds 0.1) and the NeRF's image terms on the
        rendered opacity (``sparsity``: mean sqrt(o^2 + 0.01), ``opaque``: binary entropy)."""
        regs: dict[str, Tensor] = {}
        if self.lambda_position > 0:
            regs["position"] = self.lambda_position * self.means.norm(dim=-1).mean()
        if self.lambda_opacity > 0:
            regs["opacity"] = self.lambda_opacity * (self.scales.detach().norm(dim=-1) * self.opacities).sum()
        if self.lambda_scales > 0:
            regs["scales"] = self.lambda_scales * self.scales.sum()
        if out.opacity is not None and self.lambda_sparsity > 0:
            regs["sparsity"] = self.lambda_sparsity * (out.opacity**2 + 0.01).sqrt().mean()
        if out.opacity is not None and self.lambda_opaque > 0:
            oc = out.opacity.clamp(1e-3, 1 - 1e-3)
            regs["opaque"] = self.lambda_opaque * torch.nn.functional.binary_cross_entropy(oc, oc)
        return regs

    # --- rendering -------------------------------------------------------------------------
    def render_object(self, k: int, views: ViewBatch, height: int | None = None,
                      width: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Object k through every view of ``views``: rgb (premultiplied, no background)
        (B, H, W, 3), alpha (B, H, W, 1), accumulated depth (B, H, W, 1)."""
        H = views.height if height is None else height
        W = views.width if width is None else width
        dt = self.means.dtype
        viewmats = splat.viewmats_from_c2w(views.c2w.to(dt))
        Ks = splat.intrinsics(views.fovy_deg.to(self.means.device, dt), H, W)
        return splat.rasterize(
            self.means[k], self.quats[k], self.scales[k], self.opacities[k], self.colors[k],
            viewmats, Ks, W, H, eps2d=self.eps2d, near_plane=self.near_plane,
            tile_size=self.tile_size, backend=self.renderer,
        )

    def render(self, views: ViewBatch) -> RenderOutput:
        views = views.to(self.means.device)
        H, W, B = views.height, views.width, len(views)
        if self.n_objects == 1:
            rgb, alpha, depth = self.render_object(0, views)
        else:  # each object renders its own views; reassembled in batch order
            parts, order = [], []
            for k in views.index.unique().tolist():
                sel = (views.index == k).nonzero()[:, 0]
                parts.append(self.render_object(k, views.select(sel)))
                order.append(sel)
            inv = torch.argsort(torch.cat(order))
            rgb, alpha, depth = (torch.cat(t)[inv] for t in zip(*parts))
        _, dirs = get_rays(views, H, W)
        rgb = rgb + self.background(dirs.to(rgb.dtype)) * (1.0 - alpha)
        depth = depth / alpha.clamp_min(1e-6)
        return RenderOutput(rgb=rgb.view(B, H, W, 3), opacity=alpha.view(B, H, W, 1),
                            depth=depth.view(B, H, W, 1))

    # --- export ----------------------------------------------------------------------------
    def export(self, out_dir: Path, views: ViewBatch | None = None) -> list[Path]:
        from src.export.gaussians import export_gaussians

        return export_gaussians(self, Path(out_dir), views, **self.export_cfg)
