"""``representation=nerf``: a density / color field rendered by volume rendering.

The field (threestudio's ``ImplicitVolume``, in pure torch): a multi-resolution grid
encoding of the point (fields.MultiResGrid) and one small MLP giving a pre-activation
density and an albedo; the density gets the Magic3D blob bias at start so the first
renders show a sphere. A background model colors what the rays leave uncovered.

Rendering (volume.py):
- CPU, or ``renderer: dense``: stratified samples in each ray's box intersection,
  composited with nerfacc's dense functions on (n_rays, n_samples) tensors;
- CUDA with ``renderer: auto | occgrid``: nerfacc's ``OccGridEstimator`` (one level,
  threestudio's 32^3 grid and step 1.732 * 2 radius / 512) and ``nerfacc.rendering``
  on packed samples; ``update_step`` refreshes the grid every 16 steps.

Resolution: ``render`` uses ``views.height / width`` (the camera sampler owns them)
unless ``resolution_schedule`` is set: then, in training mode, ``update_step`` picks
the render resolution from the schedule (e.g. 32 px, then 64 px after half the run,
as Magic3D/threestudio's progressive ``resolution_milestones``). The backbone's
``encode`` then receives renders at that resolution and must resize to its own
(Stable Diffusion encoders do; a pixel backbone must interpolate). Eval mode always
renders at the views' resolution.

``n_objects = K``: K independent fields (particles, VSD/ESD with one shared psi);
``views.index`` says which one each view renders. One occupancy grid covers their union.

Memory (``checkpoint_chunks``): rays are rendered in chunks of ``chunk_rays``; with
``checkpoint_chunks: true`` each chunk's field evaluation and compositing run under
``torch.utils.checkpoint`` (the sample positions are drawn first, outside it), so the forward
keeps only each chunk's pixels and the backward recomputes one chunk at a time: the autograd
memory of one chunk instead of the whole image (a 512 px render: 16 chunks), for one more field
forward. Same image, same gradients (tests/test_nerf.py, tests/test_sd_cuda.py).
``checkpoint_chunks: auto`` checkpoints only renders of AUTO_CHECKPOINT_RAYS rays or more (a
resolution schedule from 64 to 512 px then checkpoints its 512 px steps alone).

Speed (``fast_field``, on with ``backbone.fast``): on CUDA the grid lookup and its backward run
as fused Triton kernels (hashgrid_triton.py) instead of the pure-torch lookup, which stays the
reference and the CPU path; same values up to float32 summation order, deterministic backward
(tests/test_nerf_cuda.py). Measured in ``benchmarks/sd_gpu.md`` (primitives).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from src import checks
from src.cameras import ViewBatch
from src.cameras_orbit import get_rays
from src.clock import RunLength
from src.representations import volume
from src.representations.base import RenderOutput, Representation
from src.representations.fields import (
    DENSITY_ACTIVATIONS,
    TS_DENSITY_BLOB_SCALE,
    TS_DENSITY_BLOB_STD,
    Background,
    MultiResGrid,
    density_blob,
    mlp,
)

log = logging.getLogger(__name__)

# threestudio NeRFVolumeRenderer defaults (renderers/nerf_volume_renderer.py):
TS_NUM_SAMPLES_PER_RAY = 512  # -> render_step_size = 1.732 * 2 * radius / 512
TS_OCC_GRID_RESOLUTION = 32
TS_OCC_THRESHOLD = 1e-2  # occ_eval_fn = density * render_step_size, binarized at 0.01
TS_OCC_UPDATE_EVERY = 16  # nerfacc's update_every_n_steps default n
# nerfacc's sampling default: stop marching once transmittance < 1e-4
EARLY_STOP_EPS = 1e-4
SQRT3 = 1.7320508  # box diagonal / side
# checkpoint_chunks=auto checkpoints renders of this many rays or more: on an H100 with the
# fused grid lookup, VSD with a 512 px render needs checkpointing to fit 16 GB while at 256 px it
# fits without and checkpointing only costs time (benchmarks/sd_gpu_fast_field/sd_gpu.md, notes)
AUTO_CHECKPOINT_RAYS = 512 * 512
# Preview renders (Representation.preview: validation grids, the turntable video; never the
# metrics' renders) on the dense path (the CPU) skip empty space as the CUDA path's occupancy
# grid does: a cell of an occ_grid_resolution^3 lattice is sampled when its centre's
# sigma * render_step_size exceeds threestudio's TS_OCC_THRESHOLD, or a neighbour's does.


class Field(nn.Module):
    """One object's density and albedo: world points (N, 3) -> sigma (N,), rgb (N, 3)."""

    def __init__(self, radius: float, grid: dict, hidden: int, n_hidden_layers: int,
                 density_activation: str, density_bias: str, blob_scale: float, blob_std: float):
        super().__init__()
        self.radius = float(radius)
        self.encoding = MultiResGrid(**grid)
        self.net = mlp(self.encoding.output_dim, 4, hidden, n_hidden_layers)  # (density, rgb)
        self.density_activation = density_activation
        self.density_bias, self.blob_scale, self.blob_std = density_bias, blob_scale, blob_std

    def forward(self, points: Tensor, need_rgb: bool = True) -> tuple[Tensor, Tensor | None]:
        h = self.net(self.encoding((points / self.radius + 1.0) * 0.5))
        raw = h[:, 0] + density_blob(points, self.density_bias, self.blob_scale, self.blob_std)
        sigma = DENSITY_ACTIVATIONS[self.density_activation](raw)
        return sigma, (torch.sigmoid(h[:, 1:]) if need_rgb else None)


RENDERERS = ("auto", "dense", "occgrid")


class NeRF(Representation):
    kind = "3d"
    export_function = "src.export.nerf.export_nerf"

    def __init__(
        self,
        backbone=None,
        n_objects: int = 1,
        radius: float = 1.0,
        grid: dict | None = None,
        hidden: int = 64,
        n_hidden_layers: int = 1,
        density_activation: str = "softplus",
        density_bias: str = "blob_magic3d",
        density_blob_scale: float = TS_DENSITY_BLOB_SCALE,
        density_blob_std: float = TS_DENSITY_BLOB_STD,
        background: dict | None = None,
        renderer: str = "auto",
        n_samples: int = 64,
        near_plane: float = 0.0,
        num_samples_per_ray: int = TS_NUM_SAMPLES_PER_RAY,
        occ_grid_resolution: int = TS_OCC_GRID_RESOLUTION,
        occ_grid_prune: bool = True,
        lambda_sparsity: float = 0.0,
        lambda_opaque: float = 0.0,
        resolution_schedule: dict | None = None,
        chunk_rays: int = 16384,
        checkpoint_chunks: bool | str = False,
        fast_field: bool | None = None,
        lr: float = 1e-2,
        lr_grid: float | None = None,
        lr_net: float = 1e-3,
        lr_background: float = 1e-3,
        export: dict | None = None,
        run_length: RunLength | None = None,
    ):
        super().__init__(lr=lr)
        self.radius, self.n_objects = float(radius), int(n_objects)
        grid = dict(grid or {})
        self.fields = nn.ModuleList(
            Field(radius, grid, hidden, n_hidden_layers, density_activation, density_bias,
                  density_blob_scale, density_blob_std)
            for _ in range(self.n_objects)
        )
        bg = dict(background or {})
        self.background = Background(bg.pop("kind", "learned"), **bg)
        self.renderer, self.n_samples, self.near_plane = renderer, int(n_samples), float(near_plane)
        self.render_step_size = SQRT3 * 2 * self.radius / num_samples_per_ray
        self.occ_grid_prune = occ_grid_prune
        # Built on every device so checkpoints load anywhere; used only on CUDA.
        import nerfacc

        r = self.radius
        self.estimator = nerfacc.OccGridEstimator(
            roi_aabb=[-r, -r, -r, r, r, r], resolution=occ_grid_resolution, levels=1
        )
        # Fully occupied until the first update. (occs stays 0: the update takes
        # max(ema_decay * occs, new), so a 1.0 here would delay pruning ~90 updates.)
        self.estimator.binaries.fill_(True)
        self.lambda_sparsity, self.lambda_opaque = float(lambda_sparsity), float(lambda_opaque)
        self.resolution_schedule = dict(resolution_schedule) if resolution_schedule else None
        # its milestones are fractions of the run's length (src/clock.py)
        self.max_steps = run_length.steps("resolution_schedule") if self.resolution_schedule else None
        self.render_hw: tuple[int, int] | None = None
        self.chunk_rays = int(chunk_rays)
        self.checkpoint_chunks = checkpoint_chunks if checkpoint_chunks == "auto" else bool(checkpoint_chunks)
        # null follows the backbone's fast path (backbone.fast), as the other fast kernels do
        self.fast_field = bool(getattr(backbone, "fast", False) if fast_field is None else fast_field)
        for f in self.fields:
            f.encoding.fast = self.fast_field
        self.occ_grid_resolution = int(occ_grid_resolution)
        self._preview = False
        self.lr_grid = lr if lr_grid is None else lr_grid
        self.lr_net, self.lr_background = lr_net, lr_background
        self.export_cfg = dict(export or {})
        self._generator: torch.Generator | None = None

    @classmethod
    def check_config(cls, cfg, key):
        super().check_config(cfg, key)
        for name in ("n_objects", "n_samples", "num_samples_per_ray", "occ_grid_resolution", "chunk_rays"):
            checks.number(cfg, name, f"{key}.{name}", lo=1, integer=True)
        checks.number(cfg, "radius", f"{key}.radius", lo=0.0, lo_open=True)
        checks.choice(cfg, "renderer", f"{key}.renderer", RENDERERS)
        checks.choice(cfg, "density_activation", f"{key}.density_activation", DENSITY_ACTIVATIONS)
        if "checkpoint_chunks" in cfg:
            checks.choice(cfg, "checkpoint_chunks", f"{key}.checkpoint_chunks", (True, False, "auto"))
        if "fast_field" in cfg:
            checks.choice(cfg, "fast_field", f"{key}.fast_field", (True, False, None))
        for name in ("lambda_sparsity", "lambda_opaque", "near_plane"):
            checks.number(cfg, name, f"{key}.{name}", lo=0.0)
        schedule = cfg.get("resolution_schedule")
        if schedule:
            res, ms = list(schedule.get("resolutions") or []), list(schedule.get("milestones") or [])
            checks.require(len(res) >= 1 and len(ms) == len(res) - 1, f"{key}.resolution_schedule", schedule,
                           "{resolutions: [r0, r1, ...], milestones: [f1, ...]} with one milestone fewer "
                           "than resolutions")
            for i in range(len(res)):
                checks.number(res, i, f"{key}.resolution_schedule.resolutions[{i}]", lo=1, integer=True)
            for i in range(len(ms)):
                checks.number(ms, i, f"{key}.resolution_schedule.milestones[{i}]", lo=0.0, hi=1.0, lo_open=True)
            checks.require(ms == sorted(ms), f"{key}.resolution_schedule.milestones", ms, "increasing")

    # --- optimization ------------------------------------------------------------------
    def param_groups(self) -> list[dict]:
        """threestudio's split: grid lr 1e-2, MLPs and background 1e-3."""
        groups = [
            {"params": [f.encoding.table for f in self.fields], "lr": self.lr_grid, "name": "grid"},
            {"params": [p for f in self.fields for p in f.net.parameters()], "lr": self.lr_net, "name": "net"},
        ]
        bg = [p for p in self.background.parameters() if p.requires_grad]
        if bg:
            groups.append({"params": bg, "lr": self.lr_background, "name": "background"})
        return groups

    def regularizers(self, out: RenderOutput, step: int) -> dict[str, Tensor]:
        """threestudio's ``loss_sparsity`` (mean sqrt(o^2 + 0.01)) and ``loss_opaque``
        (binary entropy of the opacity, pushes each pixel to empty or solid)."""
        regs: dict[str, Tensor] = {}
        if out.opacity is None:
            return regs
        o = out.opacity
        if self.lambda_sparsity > 0:
            regs["sparsity"] = self.lambda_sparsity * (o**2 + 0.01).sqrt().mean()
        if self.lambda_opaque > 0:
            oc = o.clamp(1e-3, 1 - 1e-3)
            regs["opaque"] = self.lambda_opaque * F.binary_cross_entropy(oc, oc)
        return regs

    def scheduled_resolution(self, step: int) -> int | None:
        """``resolution_schedule = {resolutions: [r0, r1, ...], milestones: [f1, ...]}``,
        milestones as fractions of max_steps (f_i in (0, 1]): r_i from f_i * max_steps on."""
        if not self.resolution_schedule:
            return None
        res = list(self.resolution_schedule["resolutions"])
        ms = list(self.resolution_schedule.get("milestones", []))
        if len(ms) != len(res) - 1:
            raise ValueError("resolution_schedule needs len(milestones) == len(resolutions) - 1")
        i = sum(step >= f * self.max_steps for f in ms)
        return int(res[i])

    def update_step(self, step: int) -> None:
        r = self.scheduled_resolution(step)
        self.render_hw = None if r is None else (r, r)
        if self._use_occgrid() and self.occ_grid_prune and self.training:
            self.estimator.update_every_n_steps(
                step, occ_eval_fn=self._occ_eval, occ_thre=TS_OCC_THRESHOLD, n=TS_OCC_UPDATE_EVERY
            )

    @torch.no_grad()
    def _occ_eval(self, x: Tensor) -> Tensor:
        """Occupancy of points (N, 3): max over objects of sigma * step (threestudio)."""
        return torch.stack([f(x, need_rgb=False)[0] for f in self.fields]).amax(0)[:, None] * self.render_step_size

    def set_generator(self, generator: torch.Generator | None) -> None:
        """Optional: a generator for the stratified jitter (resume-exact runs)."""
        self._generator = generator

    # --- field queries -----------------------------------------------------------------
    def query(self, points: Tensor, obj: Tensor, need_rgb: bool = True) -> tuple[Tensor, Tensor | None]:
        """sigma (N,), rgb (N, 3) of points (N, 3) in the fields obj (N,) long."""
        if self.n_objects == 1:
            return self.fields[0](points, need_rgb)
        sigma = points.new_zeros(points.shape[0])
        rgb = points.new_zeros(points.shape[0], 3) if need_rgb else None
        for k in obj.unique().tolist():
            m = obj == k
            s, c = self.fields[k](points[m], need_rgb)
            sigma = sigma.index_put((m,), s)
            if need_rgb:
                rgb = rgb.index_put((m,), c)
        return sigma, rgb

    def density(self, points: Tensor, obj: int = 0) -> Tensor:
        return self.fields[obj](points, need_rgb=False)[0]

    def color(self, points: Tensor, obj: int = 0) -> Tensor:
        return self.fields[obj](points)[1]

    # --- rendering ---------------------------------------------------------------------
    def _use_occgrid(self) -> bool:
        on_cuda = self.fields[0].encoding.table.is_cuda
        if self.renderer == "occgrid" and not on_cuda:
            raise RuntimeError("renderer=occgrid needs CUDA (nerfacc's occupancy grid); use dense")
        return on_cuda and self.renderer in ("auto", "occgrid")

    def render(self, views: ViewBatch) -> RenderOutput:
        H, W = (views.height, views.width)
        if self.training and self.render_hw is not None:
            H, W = self.render_hw
        table = self.fields[0].encoding.table
        views = views.to(table.device)
        origins, dirs = (t.to(table.dtype) for t in get_rays(views, H, W))  # (B, H, W, 3) each
        device = table.device
        B = origins.shape[0]
        o, d = origins.reshape(-1, 3), dirs.reshape(-1, 3)
        obj = views.index.to(device).repeat_interleave(H * W)
        if self._use_occgrid():
            fn = self.render_rays_occgrid
        else:
            occupied = self.occupied_cells() if self._preview and not self.training else None
            fn = functools.partial(self.render_rays_dense, occupied=occupied)
        outs = [fn(o[i : i + self.chunk_rays], d[i : i + self.chunk_rays], obj[i : i + self.chunk_rays],
                   checkpoint=self.checkpointed(o.shape[0]))
                for i in range(0, o.shape[0], self.chunk_rays)]
        rgb, opacity, depth = (torch.cat(t) for t in zip(*outs))
        rgb = rgb + self.background(d) * (1.0 - opacity)
        return RenderOutput(
            rgb=rgb.view(B, H, W, 3), opacity=opacity.view(B, H, W, 1), depth=depth.view(B, H, W, 1)
        )

    def checkpointed(self, n_rays: int) -> bool:
        """Whether a render of n_rays rays checkpoints its chunks (``checkpoint_chunks``; ``auto``:
        from AUTO_CHECKPOINT_RAYS rays on)."""
        if self.checkpoint_chunks == "auto":
            return n_rays >= AUTO_CHECKPOINT_RAYS
        return bool(self.checkpoint_chunks)

    @contextlib.contextmanager
    def preview(self):
        self._preview = True
        try:
            yield
        finally:
            self._preview = False

    @torch.no_grad()
    def occupied_cells(self) -> Tensor:
        """(K, G, G, G) bool, G = occ_grid_resolution: the cells of each object's box that preview
        renders sample (the comment above TS_OCC_THRESHOLD's use here). Axes (x, y, z)."""
        G, r = self.occ_grid_resolution, self.radius
        table = self.fields[0].encoding.table
        c = ((torch.arange(G, device=table.device, dtype=table.dtype) + 0.5) / G * 2 - 1) * r
        centres = torch.stack(torch.meshgrid(c, c, c, indexing="ij"), -1).reshape(-1, 3)
        occ = [f(centres, need_rgb=False)[0] * self.render_step_size > TS_OCC_THRESHOLD for f in self.fields]
        dense = torch.stack(occ)
        return F.max_pool3d(dense.view(-1, 1, G, G, G).float(), 3, stride=1, padding=1)[:, 0] > 0

    def _hits_cells(self, o: Tensor, d: Tensor, occupied: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """hit (R,) bool, t_in, t_out (R,): the rays that cross the cube around every occupied
        cell and where they do (slab test)."""
        G, r = occupied.shape[-1], self.radius
        ijk = occupied.any(0).nonzero()
        if ijk.numel() == 0:
            zero = o.new_zeros(o.shape[0])
            return zero.bool(), zero, zero
        lo, hi = (ijk.amin(0).to(o.dtype) / G * 2 - 1) * r, ((ijk.amax(0) + 1).to(o.dtype) / G * 2 - 1) * r
        t_in, t_out, hit = volume.ray_aabb(o - 0.5 * (lo + hi), d, float((hi - lo).amax()) / 2)
        return hit, t_in, t_out

    def render_rays_dense(self, o: Tensor, d: Tensor, obj: Tensor, stratified: bool | None = None,
                          checkpoint: bool = False, occupied: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Dense path: (R, 3), (R, 3), (R,) -> rgb (R, 3) without background, opacity, depth (R, 1).
        checkpoint: recompute the field and compositing in backward (module docstring);
        occupied: occupied_cells(), whose other cells' samples get density 0 unqueried."""
        stratified = self.training if stratified is None else stratified
        t_near, t_far, hit = volume.ray_aabb(o, d, self.radius)
        t_near = t_near.clamp_min(self.near_plane)
        t_far = torch.where(hit, t_far, t_near)  # misses: zero-length intervals
        gen = self._generator if o.device.type == "cpu" else None
        t0, t1 = volume.dense_intervals(t_near, t_far, self.n_samples, stratified, gen)
        if occupied is not None:  # only rays through the occupied cells' box: the others sample none
            hit, t_in, t_out = self._hits_cells(o, d, occupied)
            rgb, opacity, depth = o.new_zeros(o.shape[0], 3), o.new_zeros(o.shape[0], 1), o.new_zeros(o.shape[0], 1)
            if bool(hit.any()):
                t0, t1 = _samples_within(t0[hit], t1[hit], t_in[hit], t_out[hit])
                parts = self._composite_dense(o[hit], d[hit], obj[hit], t0, t1, occupied)
                rgb, opacity, depth = (x.index_put((hit,), p.view(-1, x.shape[1]))
                                       for x, p in zip((rgb, opacity, depth), parts))
            return rgb, opacity, depth
        return _maybe_checkpoint(self._composite_dense, checkpoint, o, d, obj, t0, t1)

    def _composite_dense(self, o, d, obj, t0, t1, occupied: Tensor | None = None):
        R, S = t0.shape
        pts = o[:, None] + d[:, None] * (0.5 * (t0 + t1))[..., None]  # (R, S, 3)
        if occupied is None:
            sigma, rgb = self.query(pts.reshape(-1, 3), obj.repeat_interleave(S))
        else:
            flat, objs = pts.reshape(-1, 3), obj.repeat_interleave(S)
            G = occupied.shape[-1]
            ijk = ((flat / self.radius + 1) * 0.5 * G).floor().long().clamp(0, G - 1)
            keep = occupied[objs, ijk[:, 0], ijk[:, 1], ijk[:, 2]]
            sigma, rgb = flat.new_zeros(flat.shape[0]), flat.new_zeros(flat.shape[0], 3)
            if bool(keep.any()):
                s, c = self.query(flat[keep], objs[keep])
                sigma, rgb = sigma.index_put((keep,), s), rgb.index_put((keep,), c)
        rgb_out, opacity, depth, _ = volume.composite(t0, t1, sigma.view(R, S), rgb.view(R, S, 3))
        return rgb_out, opacity, depth

    def render_rays_fixed_step(self, o: Tensor, d: Tensor, obj: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The occupancy-grid marcher's samples (all cells occupied) on the dense path:
        the CPU twin of ``render_rays_occgrid`` for tests."""
        t_min, t_max, hit = volume.ray_aabb(o, d, self.radius)
        t_min = t_min.clamp_min(self.near_plane)
        t_max = torch.where(hit, t_max, t_min)
        n_max = int(math.ceil(float((t_max - t_min).max()) / self.render_step_size)) + 2
        t0, t1, _ = volume.fixed_step_intervals(t_min, t_max, self.render_step_size, n_max, self.near_plane)
        return self._composite_dense(o, d, obj, t0, t1)

    def render_rays_occgrid(self, o: Tensor, d: Tensor, obj: Tensor, early_stop_eps: float = EARLY_STOP_EPS,
                            checkpoint: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """CUDA path: nerfacc occupancy-grid marching + packed compositing.
        checkpoint: recompute the field and compositing in backward (module docstring)."""

        def sigma_fn(t0, t1, ri):
            p = o[ri] + d[ri] * (0.5 * (t0 + t1))[:, None]
            return self.query(p, obj[ri], need_rgb=False)[0]

        with torch.no_grad():
            ri, t0, t1 = self.estimator.sampling(
                o, d, sigma_fn=sigma_fn if early_stop_eps > 0 else None, near_plane=self.near_plane,
                render_step_size=self.render_step_size, stratified=self.training,
                early_stop_eps=early_stop_eps, alpha_thre=0.0,
            )
        return _maybe_checkpoint(self._composite_packed, checkpoint, o, d, obj, t0, t1, ri)

    def _composite_packed(self, o, d, obj, t0, t1, ri):
        """Packed samples (N,) of rays ri -> rgb (R, 3), opacity, depth (R, 1) (nerfacc.rendering)."""
        import nerfacc

        def rgb_sigma_fn(t0, t1, ri):
            p = o[ri] + d[ri] * (0.5 * (t0 + t1))[:, None]
            sigma, rgb = self.query(p, obj[ri])
            return rgb, sigma

        rgb, opacity, depth, _ = nerfacc.rendering(t0, t1, ri, n_rays=o.shape[0], rgb_sigma_fn=rgb_sigma_fn)
        return rgb, opacity, depth

    @torch.no_grad()
    def samples(self, views: ViewBatch) -> Tensor:
        """Renders for metrics: eval mode (midpoint samples, the views' own resolution)."""
        was = self.training
        self.eval()
        try:
            return self.render(views).rgb
        finally:
            self.train(was)

    # --- export ------------------------------------------------------------------------
    def export(self, out_dir: Path, views: ViewBatch | None = None) -> list[Path]:
        from src.export.nerf import export_nerf

        return export_nerf(self, Path(out_dir), views, **self.export_cfg)


def _samples_within(t0: Tensor, t1: Tensor, t_in: Tensor, t_out: Tensor) -> tuple[Tensor, Tensor]:
    """The intervals (R, S) of each ray whose midpoints lie in [t_in, t_out] (R,), as (R, L)
    with L the most any ray has, rows padded with zero-length intervals (alpha 0: they change
    no pixel). Those outside hold no occupied cell, so compositing only these is the same."""
    mid = 0.5 * (t0 + t1)
    inside = (mid >= t_in[:, None]) & (mid <= t_out[:, None])  # contiguous: the cube is convex
    count = inside.sum(1)
    length = max(int(count.max()), 1)
    first = inside.float().argmax(1)
    k = torch.arange(length, device=t0.device)
    idx = (first[:, None] + k).clamp(max=t0.shape[1] - 1)
    a, b = t0.gather(1, idx), t1.gather(1, idx)
    return a, torch.where(k < count[:, None], b, a)


def _maybe_checkpoint(fn, checkpoint: bool, *args):
    """fn(*args), under torch.utils.checkpoint when asked and a gradient is being recorded.
    fn draws no random numbers (samples are placed before), so the recomputation is exact."""
    if checkpoint and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)
