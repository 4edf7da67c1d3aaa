"""``representation=gaussians``: 3D Gaussian splatting (Kerbl et al. 2023) through gsplat.

Parameters. Each object k (``n_objects`` = K particles) holds its own set of N_k Gaussians,
``splats[k]``, named and stored as gsplat's trainers do (``examples/simple_trainer.py``):
``means`` (N, 3), ``scales`` (N, 3) log-scales, ``quats`` (N, 4) wxyz (normalized when
used), ``opacities`` (N,) logits, ``sh0`` (N, 1, 3) and ``shN`` (N, (d+1)^2 - 1, 3) the
colour's SH coefficients (shN only when ``sh_degree`` d > 0). rgb = max(0, 0.5 + sum_l
Y_l(dir) c_l) (gsplat / 3DGS; the DC term alone is 0.5 + C0 sh0). The counts differ per
object once densification runs, so the objects are separate parameter sets.

Init (threestudio-3dgs ``GaussianBaseModel.configure``): ``n_gaussians`` points uniform in a
ball of radius ``init_radius`` (default 0.5: the NeRF's density blob here; threestudio uses
0.8 at camera distance 2.5), or the points (and colours) of a point-cloud ``.ply``
(``init_ply``; GaussianDreamer starts from Shap-E's points, threestudio-3dgs
``geometry_convert_from``); scales = the 3-NN distance (3DGS's ``distCUDA2``), identity
rotations, opacity ``opacity_init`` (threestudio-3dgs's SDS config: 0.8), gray colour
(threestudio: rgb 0.5 + U(0, 1/255) * C0) where the file has none.

Rendering (splat.py): ``gsplat.rasterization`` on CUDA (``renderer: auto | gsplat``), the
pure-torch reference on the CPU (``renderer: auto | torch``), both with the SH degree of
the schedule; both return premultiplied rgb and alpha, and the background model (as the
NeRF's, ``backbone.background``) fills 1 - alpha. ``depth`` is the expected camera-z depth
of the opaque part (sum w z / alpha).

The schedule (threestudio-3dgs ``configs/gaussian_splatting.yaml`` + ``GaussianBaseModel``,
GaussianDreamer, 3DGS ``train.py``; constants below):
- per-parameter learning rates, the position lr decaying log-linearly from ``lr`` to
  ``lr_final`` over ``lr_decay_steps`` (3DGS ``get_expon_lr_func``) through the
  ``lr_scale`` hook (the trainer's LambdaLR multiplies it in); Adam eps 1e-15 per group;
- the SH degree raised by one every ``sh_degree_interval`` steps up to ``sh_degree``
  (3DGS ``oneupSHdegree``);
- adaptive density control through ``gsplat.strategy.DefaultStrategy`` (``densify``: its
  arguments; null = a fixed set): every ``refine_every`` steps inside the window, Gaussians
  whose mean view-space gradient exceeds ``grow_grad2d`` are cloned (small) or split (large,
  by ``grow_scale3d * scene_scale``), those below ``prune_opa`` opacity (and, after the
  first opacity reset, above ``prune_scale3d * scene_scale`` size) are pruned; every
  ``reset_every`` steps opacities are clamped to 2 ``prune_opa`` (gsplat's ``reset_opa``,
  called here: gsplat 1.5.3's own test for it never fires, see ``after_optimizer_step``).
Left out: GaussianDreamer's screen-size prune (max 2D radius > 20 px from step 500; gsplat
has it as ``refine_scale2d_stop_iter`` / ``prune_scale2d``, off by default, and ``densify``
passes them through) and its extra random points around Shap-E's (``add_points``).

How gsplat's strategy meets the trainer's single optimizer: the strategy wants a dict of
parameters and one single-group optimizer per parameter. ``param_groups`` gives each
parameter of each object its own group of the trainer's optimizer, and ``OneGroup`` shows
each group to gsplat as such an optimizer (sharing the optimizer's state and holding the
group dict itself), so gsplat's own ops (``duplicate``/``split``/``remove``/``reset_opa``)
move the Adam moments and swap the group's parameter in the trainer's optimizer. The
strategy runs in ``after_optimizer_step`` (gsplat's trainer order: backward, optimizer
step, ``step_post_backward``), reading the ``info`` of this step's render (its ``means2d``
gradient kept by ``retain_grad``). Its running state and the SH degree reached are the
module's extra state, so a checkpoint holds them; loading resizes each parameter in place
(same tensor object), so the optimizer built before loading still holds them.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
from gsplat.strategy import DefaultStrategy
from gsplat.strategy.ops import reset_opa
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
TS_LR_POSITION = 1e-3  # position_lr_init
TS_LR_POSITION_FINAL = 2e-5  # position_lr_final
TS_LR_POSITION_STEPS = 1000  # position_lr_max_steps
TS_LR_SCALING = 5e-3  # scaling_lr / scale_lr_init (= scale_lr_final: constant)
TS_LR_ROTATION = 5e-3  # rotation_lr (the 3DGS paper: 1e-3)
TS_LR_OPACITY = 5e-2  # opacity_lr
TS_LR_FEATURE = 1e-2  # feature_lr (SH DC)
# 3DGS scene/gaussian_model.py training_setup (threestudio-3dgs copies it): f_rest at
# feature_lr / 20, Adam eps 1e-15.
GS_LR_REST_DIVISOR = 20.0
GS_ADAM_EPS = 1e-15
# 3DGS train.py: "Every 1000 its we increase the levels of SH up to a maximum degree".
GS_SH_INTERVAL = 1000
SH_C0 = 0.28209479177387814
PARAM_NAMES = ("means", "scales", "quats", "opacities", "sh0", "shN")


def inverse_sigmoid(x: Tensor) -> Tensor:
    return torch.log(x / (1.0 - x))


def random_ball(n: int, radius: float, generator: torch.Generator | None = None) -> Tensor:
    """n points uniform in a ball (threestudio-3dgs: phi, cos theta uniform, r = R cbrt(u))."""
    u = torch.rand(n, 3, generator=generator)
    phi, cos_t = u[:, 0] * 2 * math.pi, u[:, 1] * 2 - 1
    sin_t = (1 - cos_t**2).clamp_min(0).sqrt()
    r = radius * u[:, 2].pow(1.0 / 3.0)
    return torch.stack([r * sin_t * phi.cos(), r * sin_t * phi.sin(), r * cos_t], -1)


def expon_lr(step: int, lr_init: float, lr_final: float, max_steps: int) -> float:
    """3DGS ``get_expon_lr_func`` (from Plenoxels): lr_init at step 0, lr_final at max_steps,
    log-linear between, lr_final after. (Its delay term needs lr_delay_steps > 0, which
    3DGS, threestudio-3dgs and GaussianDreamer never pass, so it is left out.)"""
    t = min(max(step / max_steps, 0.0), 1.0)
    return math.exp(math.log(lr_init) * (1 - t) + math.log(lr_final) * t)


def sh_degree_at(step: int, max_degree: int, interval: int) -> int:
    """The SH degree used at (0-based) trainer step ``step``: 3DGS raises it after its
    1-based iterations 1000, 2000, ... (``if iteration % 1000 == 0: oneupSHdegree()``), i.e.
    steps 1000, 2000, ... are the first of each new band."""
    return min(int(max_degree), int(step) // int(interval))


# Copies of every parameter a step holds: the value, its gradient, Adam's two moments.
STATE_COPIES = 4


class OneGroup:
    """One param group of an optimizer, seen as the one-group optimizer gsplat's strategy
    expects per parameter (``Strategy.check_sanity``). It shares the optimizer's ``state``
    and holds the group dict itself, so gsplat's surgery (``ops._update_param_with_optimizer``:
    move the moments to the new tensor, set ``param_groups[0]["params"]``) edits the real
    optimizer in place."""

    def __init__(self, optimizer: torch.optim.Optimizer, group: dict):
        self.state = optimizer.state
        self.param_groups = [group]


def group_views(optimizer: torch.optim.Optimizer, params: nn.ParameterDict) -> dict[str, OneGroup]:
    """name -> OneGroup of the optimizer group that holds exactly that parameter (by identity)."""
    by_id = {id(g["params"][0]): g for g in optimizer.param_groups if len(g["params"]) == 1}
    views = {}
    for name, p in params.items():
        if id(p) not in by_id:
            raise RuntimeError(f"Gaussian parameter {name!r} has no param group of its own in the optimizer: "
                               "build the optimizer from Gaussians.param_groups()")
        views[name] = OneGroup(optimizer, by_id[id(p)])
    return views


def read_point_cloud(path: str | Path) -> tuple[Tensor, Tensor | None]:
    """Points (N, 3) and colours (N, 3) in [0, 1] or None, from a .ply point cloud or mesh
    (its vertices): ``red green blue`` (uchar or float) or a 3DGS file's ``f_dc_*``."""
    import numpy as np
    import trimesh

    geom = trimesh.load(str(path), process=False)
    if isinstance(geom, trimesh.Scene):
        geom = trimesh.util.concatenate(list(geom.geometry.values()))
    points = torch.as_tensor(np.asarray(geom.vertices), dtype=torch.float32)
    raw = geom.metadata.get("_ply_raw", {}).get("vertex", {}).get("data")
    names = set(raw.dtype.names or ()) if raw is not None else set()
    rgb = None
    if {"red", "green", "blue"} <= names:
        cols = np.stack([raw[c] for c in ("red", "green", "blue")], -1).astype(np.float32)
        rgb = torch.as_tensor(cols / 255.0 if raw["red"].dtype == np.uint8 else cols)
    elif {"f_dc_0", "f_dc_1", "f_dc_2"} <= names:
        dc = np.stack([raw[f"f_dc_{i}"] for i in range(3)], -1).astype(np.float32)
        rgb = torch.as_tensor(0.5 + SH_C0 * dc)
    return points, rgb


RENDERERS = ("auto", "gsplat", "torch")
STRATEGY_FIELDS = {f.name for f in dataclasses.fields(DefaultStrategy)}


class Gaussians(Representation):
    kind = "3d"
    export_function = "src.export.gaussians.export_gaussians"

    def __init__(
        self,
        backbone=None,
        n_objects: int = 1,
        n_gaussians: int = TS_INIT_NUM_PTS,
        init_radius: float = 0.5,
        init_ply: str | None = None,
        opacity_init: float = TS_OPACITY_INIT,
        color_init: float = 0.5,
        sh_degree: int = 0,
        sh_degree_interval: int = GS_SH_INTERVAL,
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
        lr_final: float | None = TS_LR_POSITION_FINAL,
        lr_decay_steps: int = TS_LR_POSITION_STEPS,
        lr_scales: float = TS_LR_SCALING,
        lr_quats: float = TS_LR_ROTATION,
        lr_opacities: float = TS_LR_OPACITY,
        lr_sh0: float = TS_LR_FEATURE,
        lr_shN: float = TS_LR_FEATURE / GS_LR_REST_DIVISOR,
        lr_background: float = 1e-3,
        adam_eps: float = GS_ADAM_EPS,
        densify: dict | None = None,
        scene_scale: float = 1.0,
        export: dict | None = None,
        init_seed: int | None = None,
    ):
        super().__init__(lr=lr)
        self.n_objects, self.sh_degree = int(n_objects), int(sh_degree)
        self.sh_degree_interval = int(sh_degree_interval)
        g = rng.generator(int(init_seed), rng.Stream.INIT) if init_seed is not None else None
        if init_ply:
            points, rgb = read_point_cloud(init_ply)
            clouds = [(points, rgb)] * self.n_objects
        else:
            clouds = [(random_ball(int(n_gaussians), init_radius, g), None) for _ in range(self.n_objects)]
        self.splats = nn.ModuleList([self._init_splats(p, c, opacity_init, color_init, g) for p, c in clouds])
        self.n_gaussians = len(self.splats[0]["means"])  # the initial count (per object)
        bg = dict(background or {})
        self.background = Background(bg.pop("kind", "learned"), **bg)
        self.renderer, self.eps2d = renderer, float(eps2d)
        self.near_plane, self.tile_size = float(near_plane), int(tile_size)
        self.lambda_position, self.lambda_opacity = float(lambda_position), float(lambda_opacity)
        self.lambda_scales = float(lambda_scales)
        self.lambda_sparsity, self.lambda_opaque = float(lambda_sparsity), float(lambda_opaque)
        self.lrs = {"means": lr, "scales": lr_scales, "quats": lr_quats, "opacities": lr_opacities,
                    "sh0": lr_sh0, "shN": lr_shN}
        self.lr_final, self.lr_decay_steps = lr_final, int(lr_decay_steps)
        self.lr_background, self.adam_eps = lr_background, float(adam_eps)
        self.strategy = DefaultStrategy(**dict(densify)) if densify is not None else None
        self.scene_scale = float(scene_scale)
        self.strategy_states = [self._fresh_state() for _ in range(self.n_objects)]
        self.active_sh_degree = 0
        self.export_cfg = dict(export or {})
        self._step = 0
        self._infos: dict[int, dict] = {}  # this step's render info per object (transient)

    def _init_splats(self, points: Tensor, rgb: Tensor | None, opacity_init: float, color_init: float,
                     g: torch.Generator | None) -> nn.ParameterDict:
        N = points.shape[0]
        if rgb is None:
            rgb = color_init + torch.rand(N, 3, generator=g) / 255.0 * SH_C0  # threestudio's jitter
        quats = torch.zeros(N, 4)
        quats[:, 0] = 1.0
        params = {
            "means": points.float(),
            "scales": splat.knn_scale(points.float()).log()[:, None].repeat(1, 3),
            "quats": quats,
            "opacities": inverse_sigmoid(torch.full((N,), float(opacity_init))),
            "sh0": ((rgb.float() - 0.5) / SH_C0)[:, None, :],
        }
        if self.sh_degree > 0:
            params["shN"] = torch.zeros(N, (self.sh_degree + 1) ** 2 - 1, 3)
        return nn.ParameterDict({k: nn.Parameter(v) for k, v in params.items()})

    def _fresh_state(self) -> dict:
        return self.strategy.initialize_state(self.scene_scale) if self.strategy is not None else {}

    @classmethod
    def check_config(cls, cfg, key):
        super().check_config(cfg, key)
        for name in ("n_objects", "n_gaussians", "tile_size", "sh_degree_interval", "lr_decay_steps"):
            checks.number(cfg, name, f"{key}.{name}", lo=1, integer=True)
        checks.number(cfg, "sh_degree", f"{key}.sh_degree", lo=0, hi=4, integer=True)  # gsplat: degrees 0-4
        for name in ("opacity_init", "color_init"):
            checks.number(cfg, name, f"{key}.{name}", lo=0.0, hi=1.0, lo_open=True, hi_open=True)
        for name in ("init_radius", "scene_scale", "adam_eps"):
            checks.number(cfg, name, f"{key}.{name}", lo=0.0, lo_open=True)
        checks.number(cfg, "lr_final", f"{key}.lr_final", lo=0.0, lo_open=True, optional=True)
        checks.choice(cfg, "renderer", f"{key}.renderer", RENDERERS)
        for name in ("lambda_position", "lambda_opacity", "lambda_scales", "lambda_sparsity",
                     "lambda_opaque", "eps2d", "near_plane"):
            checks.number(cfg, name, f"{key}.{name}", lo=0.0)
        init_ply = cfg.get("init_ply")
        checks.require(init_ply is None or Path(str(init_ply)).is_file(), f"{key}.init_ply", init_ply,
                       "a point-cloud .ply file that exists, or null (random ball)")
        densify = cfg.get("densify")
        if densify is not None:
            unknown = sorted(str(k) for k in densify if str(k) not in STRATEGY_FIELDS)
            checks.require(not unknown, f"{key}.densify", unknown,
                           f"gsplat DefaultStrategy takes: {', '.join(sorted(STRATEGY_FIELDS))}")
            for name in ("refine_start_iter", "refine_stop_iter", "refine_every", "reset_every"):
                checks.number(densify, name, f"{key}.densify.{name}", lo=1 if name != "refine_start_iter" else 0,
                              integer=True, optional=True)
            for name in ("prune_opa", "grow_grad2d", "grow_scale3d", "prune_scale3d"):
                checks.number(densify, name, f"{key}.densify.{name}", lo=0.0, optional=True)

    @classmethod
    def check_composition(cls, cfg, key, root):
        """Densification needs float32; the initial Gaussians' parameters, gradients and two
        Adam moments must fit in the device's memory (a typo'd n_gaussians would otherwise fail
        in the allocator)."""
        degree = int(cfg.get("sh_degree") or 0)
        floats = 3 + 3 + 4 + 1 + 3 + 3 * ((degree + 1) ** 2 - 1)  # means scales quats opacity sh0 shN
        width = 8 if root.trainer.get("dtype") == "float64" else 4
        need = float(cfg.n_gaussians) * int(cfg.get("n_objects") or 1) * floats * width * STATE_COPIES
        checks.fits_memory(f"{key}.n_gaussians", cfg.n_gaussians, need,
                           "their parameters, gradients and Adam moments", str(root.get("device")))
        # gsplat's split draws float32 noise and its ops append float32 zeros (ops.py), which
        # float64 parameters refuse (einsum needs one dtype)
        dtype = root.get("trainer", {}).get("dtype", "float32")
        checks.require(cfg.get("densify") is None or dtype == "float32", f"{key}.densify", "set",
                       f"densification needs trainer.dtype=float32 (gsplat's ops), got {dtype}; "
                       f"set {key}.densify=null for a fixed set")

    # --- activations / counts ------------------------------------------------------------
    def counts(self) -> list[int]:
        """Current number of Gaussians of each object."""
        return [len(p["means"]) for p in self.splats]

    def rgb(self, k: int) -> Tensor:
        """View-independent (DC) colour of object k's Gaussians, (N, 3): 0.5 + C0 sh0."""
        return 0.5 + SH_C0 * self.splats[k]["sh0"][:, 0, :]

    def sh_coeffs(self, k: int) -> Tensor:
        """(N, (d+1)^2, 3) SH coefficients of the active degree d (gsplat's colour layout)."""
        p = self.splats[k]
        n_rest = (self.active_sh_degree + 1) ** 2 - 1
        return torch.cat([p["sh0"], p["shN"][:, :n_rest]], 1) if n_rest > 0 else p["sh0"]

    # --- optimization ----------------------------------------------------------------------
    def param_groups(self) -> list[dict]:
        """One group per parameter of each object (gsplat's strategy edits them one by one,
        see OneGroup), threestudio-3dgs's learning rates and 3DGS's Adam eps."""
        groups = [{"params": [p], "lr": self.lrs[name], "name": name, "eps": self.adam_eps}
                  for params in self.splats for name, p in params.items()]
        bg = [p for p in self.background.parameters() if p.requires_grad]
        if bg:
            groups.append({"params": bg, "lr": self.lr_background, "name": "background"})
        return groups

    def lr_scale(self, name: str, step: int) -> float:
        """The position lr's log-linear decay (3DGS get_expon_lr_func) relative to ``lr``."""
        if name != "means" or self.lr_final is None or self.lr <= 0:
            return 1.0
        return expon_lr(step, self.lr, self.lr_final, self.lr_decay_steps) / self.lr

    def update_step(self, step: int) -> None:
        self._step = int(step)
        self.active_sh_degree = sh_degree_at(step, self.sh_degree, self.sh_degree_interval)

    def after_optimizer_step(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        """gsplat's ``DefaultStrategy.step_post_backward`` on each object, with this step's
        render info (an object not rendered this step gets an info with no camera: its
        statistics do not move, its refine steps still run, as gsplat's would)."""
        infos, self._infos = self._infos, {}
        if self.strategy is None:
            return
        for k, params in enumerate(self.splats):
            info = infos.get(k) or self._unseen_info(k)
            optimizers = group_views(optimizer, params)
            self.strategy.check_sanity(params, optimizers)
            state = self.strategy_states[k]
            self.strategy.step_post_backward(params, optimizers, state, step, info, packed=False)
            # gsplat 1.5.3 never resets: its test `step % reset_every == 0 & step > 0` parses
            # as `step % reset_every == (0 & step) > 0`, always False (fixed upstream by
            # nerfstudio-project/gsplat#776). The intended rule, with gsplat's own op and
            # value; reset_opa is idempotent (a clamp, moments zeroed), so a fixed gsplat
            # would give the same result.
            s = self.strategy
            if 0 < step < s.refine_stop_iter and step % s.reset_every == 0:
                reset_opa(params=params, optimizers=optimizers, state=state, value=s.prune_opa * 2.0)

    def _unseen_info(self, k: int) -> dict:
        means = self.splats[k]["means"]
        m2d = means.new_zeros(0, len(means), 2)
        m2d.grad = torch.zeros_like(m2d)
        return {"means2d": m2d, "radii": torch.zeros(0, len(means), 2, dtype=torch.int32, device=means.device),
                "width": 1, "height": 1, "n_cameras": 1, "gaussian_ids": None}

    def get_extra_state(self) -> dict:
        """The strategy's running statistics per object and the SH degree reached."""
        return {"strategy": [dict(s) for s in self.strategy_states], "active_sh_degree": self.active_sh_degree}

    def set_extra_state(self, state: dict) -> None:
        self.strategy_states = [{k: v.clone() if isinstance(v, Tensor) else v for k, v in s.items()}
                                for s in state["strategy"]]
        self.active_sh_degree = int(state["active_sh_degree"])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A checkpoint taken after densification holds other counts: resize each parameter
        # in place (the same Parameter object, which the optimizer built before loading holds),
        # then the ordinary copy fills it.
        with torch.no_grad():
            for k, params in enumerate(self.splats):
                for name, p in params.items():
                    saved = state_dict.get(f"{prefix}splats.{k}.{name}")
                    if saved is not None and saved.shape != p.shape:
                        p.data = p.data.new_empty(saved.shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def metrics(self) -> dict[str, float]:
        """``n_gaussians``: the current count (the total, plus ``n_gaussians_k`` per object
        when there are several)."""
        counts = self.counts()
        out = {"n_gaussians": sum(counts)}
        if len(counts) > 1:
            out.update({f"n_gaussians_{k}": n for k, n in enumerate(counts)})
        return out

    def regularizers(self, out: RenderOutput, step: int) -> dict[str, Tensor]:
        """threestudio-3dgs's geometry terms (its system's ``loss_position`` mean |x|,
        ``loss_opacity`` sum_i |s_i| o_i with |s| detached, ``loss_scales`` sum of scales;
        weighted 1.0 there against lambda_sds 0.1) and the NeRF's image terms on the
        rendered opacity (``sparsity``: mean sqrt(o^2 + 0.01), ``opaque``: binary entropy)."""
        regs: dict[str, Tensor] = {}
        if self.lambda_position > 0:
            means = torch.cat([p["means"] for p in self.splats])
            regs["position"] = self.lambda_position * means.norm(dim=-1).mean()
        if self.lambda_opacity > 0:
            regs["opacity"] = self.lambda_opacity * sum(
                (p["scales"].detach().exp().norm(dim=-1) * torch.sigmoid(p["opacities"])).sum() for p in self.splats)
        if self.lambda_scales > 0:
            regs["scales"] = self.lambda_scales * sum(p["scales"].exp().sum() for p in self.splats)
        if out.opacity is not None and self.lambda_sparsity > 0:
            regs["sparsity"] = self.lambda_sparsity * (out.opacity**2 + 0.01).sqrt().mean()
        if out.opacity is not None and self.lambda_opaque > 0:
            oc = out.opacity.clamp(1e-3, 1 - 1e-3)
            regs["opaque"] = self.lambda_opaque * torch.nn.functional.binary_cross_entropy(oc, oc)
        return regs

    # --- rendering -------------------------------------------------------------------------
    def render_object(self, k: int, views: ViewBatch, height: int | None = None,
                      width: int | None = None) -> tuple[Tensor, Tensor, Tensor, dict]:
        """Object k through every view of ``views``: rgb (premultiplied, no background)
        (B, H, W, 3), alpha (B, H, W, 1), accumulated depth (B, H, W, 1), and the
        rasterizer's info (gsplat's meta keys; splat.rasterize_torch)."""
        H = views.height if height is None else height
        W = views.width if width is None else width
        p = self.splats[k]
        dt = p["means"].dtype
        viewmats = splat.viewmats_from_c2w(views.c2w.to(dt))
        Ks = splat.intrinsics(views.fovy_deg.to(p["means"].device, dt), H, W)
        return splat.rasterize(
            p["means"], p["quats"], p["scales"].exp(), torch.sigmoid(p["opacities"]), self.sh_coeffs(k),
            viewmats, Ks, W, H, eps2d=self.eps2d, near_plane=self.near_plane,
            tile_size=self.tile_size, backend=self.renderer, sh_degree=self.active_sh_degree,
        )

    def render(self, views: ViewBatch) -> RenderOutput:
        views = views.to(self.splats[0]["means"].device)
        H, W, B = views.height, views.width, len(views)
        parts, order = [], []
        for k in views.index.unique().tolist():  # each object renders its own views
            sel = (views.index == k).nonzero()[:, 0]
            rgb, alpha, depth, info = self.render_object(k, views.select(sel))
            if info["means2d"].requires_grad:  # a training render: keep it for the strategy
                # the trainer's loss is a mean over the whole batch, of which these are
                # len(sel) views: gsplat's n_cameras undoes that mean (its trainers average
                # over their C cameras), so it is the batch size here
                info["n_cameras"] = B
                if self.strategy is not None:  # DefaultStrategy.step_pre_backward: retain_grad
                    self.strategy.step_pre_backward(self.splats[k], {}, self.strategy_states[k], self._step, info)
                self._infos[k] = info
            parts.append((rgb, alpha, depth))
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
