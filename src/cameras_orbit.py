"""Orbit cameras: the one camera model of all 3D code (samplers, NeRF, ShapesWorld's renderer).

Conventions (threestudio's, so its ranges and view prompts carry over unchanged):

- World is **z-up**. The object sits at the origin. A camera at azimuth ``az`` and
  elevation ``el`` (degrees) and distance ``d`` is at
  ``d * (cos el cos az, cos el sin az, sin el)``: azimuth 0 looks at the object from
  +x, so the object's **front is its +x side** (``view_prompt_index`` calls
  |az| <= 45 deg "front").
- ``c2w`` is camera-to-world in the **OpenGL convention**: columns are the camera's
  right (+x), up (+y) and back (+z) axes in world coordinates, then its position;
  the camera looks down its -z axis.
- Pinhole intrinsics from the vertical field of view: ``focal = 0.5 H / tan(fovy / 2)``,
  principal point at the image centre, rays through **pixel centres**; image row 0 is
  the top of the picture (camera +y).

``get_rays(views)`` turns a ViewBatch into per-pixel rays; ``OrbitSampler`` samples
training cameras like threestudio's random-camera datamodule and gives a
deterministic turntable for evaluation; ``FixedSampler`` is the single fixed
camera of ``representation=image``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from src import checks
from src.cameras import CAM_DIM, ViewBatch, view_prompt_index

# threestudio's RandomCameraDataModuleConfig defaults
# (threestudio/data/uncond.py, `RandomCameraDataModuleConfig`):
TS_ELEVATION_RANGE = (-10.0, 90.0)  # degrees
TS_AZIMUTH_RANGE = (-180.0, 180.0)  # degrees
TS_DISTANCE_RANGE = (1.0, 1.5)  # `camera_distance_range`
TS_FOVY_RANGE = (40.0, 70.0)  # degrees
TS_BATCH_SIZE = 1
TS_CAMERA_PERTURB = 0.1  # uniform +-, added to the camera position
TS_CENTER_PERTURB = 0.2  # std of a Gaussian added to the look-at centre
TS_UP_PERTURB = 0.02  # std of a Gaussian added to the up vector
TS_EVAL_ELEVATION = 15.0  # `eval_elevation_deg`
# threestudio samples elevation uniformly in degrees half of the time and uniformly
# on the sphere's area the other half (uncond.py, `collate`): this is that probability.
TS_ELEVATION_SPHERE_PROB = 0.5

WORLD_UP = (0.0, 0.0, 1.0)
# |right| below this means the look-at direction is (anti)parallel to "up" (a camera
# straight overhead): fall back to the azimuth's tangent, which is the limit from below.
_DEGENERATE = 1e-6


def _normalize(v: Tensor) -> Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def orbit_position(azimuth_deg: Tensor, elevation_deg: Tensor, distance: Tensor) -> Tensor:
    """Camera centres on the orbit; (B,), (B,), (B,) -> (B, 3), z-up."""
    az, el = torch.deg2rad(azimuth_deg), torch.deg2rad(elevation_deg)
    return torch.stack(
        [distance * el.cos() * az.cos(), distance * el.cos() * az.sin(), distance * el.sin()], -1
    )


def look_at(
    position: Tensor, center: Tensor, up: Tensor, azimuth_deg: Tensor | None = None
) -> Tensor:
    """OpenGL camera-to-world matrices; (B, 3) x3 -> (B, 4, 4).

    right = lookat x up, up' = right x lookat, columns (right, up', -lookat, position)
    exactly as threestudio builds ``c2w``. Where lookat is parallel to ``up`` (elevation
    +-90) the right vector is the azimuth tangent (-sin az, cos az, 0) instead of NaN.
    """
    lookat = _normalize(center - position)
    right = torch.linalg.cross(lookat, up, dim=-1)
    if azimuth_deg is not None:
        az = torch.deg2rad(azimuth_deg).to(position.dtype)
        tangent = torch.stack([-az.sin(), az.cos(), torch.zeros_like(az)], -1)
        bad = right.norm(dim=-1, keepdim=True) < _DEGENERATE
        right = torch.where(bad, tangent, right)
    right = _normalize(right)
    cam_up = _normalize(torch.linalg.cross(right, lookat, dim=-1))
    B = position.shape[0]
    c2w = torch.zeros(B, 4, 4, dtype=position.dtype, device=position.device)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2] = right, cam_up, -lookat
    c2w[:, :3, 3] = position
    c2w[:, 3, 3] = 1.0
    return c2w


def make_views(
    azimuth_deg: Tensor,
    elevation_deg: Tensor,
    distance: Tensor,
    fovy_deg: Tensor,
    height: int,
    width: int,
    index: Tensor | None = None,
    c2w: Tensor | None = None,
) -> ViewBatch:
    """A ViewBatch of orbit cameras looking at the origin (all (B,) float tensors).

    ``c2w`` may be given (perturbed cameras); the view prompt always comes from the
    nominal azimuth / elevation, as in threestudio.
    """
    azimuth_deg, elevation_deg = azimuth_deg.float(), elevation_deg.float()
    distance, fovy_deg = distance.float(), fovy_deg.float()
    B = azimuth_deg.shape[0]
    if c2w is None:
        pos = orbit_position(azimuth_deg, elevation_deg, distance)
        up = torch.tensor(WORLD_UP).expand(B, 3)
        c2w = look_at(pos, torch.zeros(B, 3), up, azimuth_deg)
    if index is None:
        index = torch.zeros(B, dtype=torch.long)
    return ViewBatch(
        index=index,
        view_idx=view_prompt_index(azimuth_deg, elevation_deg),
        cam=c2w.reshape(B, CAM_DIM),
        c2w=c2w,
        fovy_deg=fovy_deg,
        azimuth_deg=azimuth_deg,
        elevation_deg=elevation_deg,
        distance=distance,
        height=height,
        width=width,
    )


def get_rays(views: ViewBatch, height: int | None = None, width: int | None = None) -> tuple[Tensor, Tensor]:
    """Per-pixel rays of a batch of pinhole cameras.

    views: needs ``c2w`` (B, 4, 4) and ``fovy_deg`` (B,); ``height`` / ``width`` default
    to the batch's own (pass them to render the same cameras at another resolution:
    the field of view is kept, so the picture is the same, only sampled finer).
    Returns (origins, directions), each (B, H, W, 3), directions unit-length, in
    c2w's dtype and device.
    """
    H = views.height if height is None else height
    W = views.width if width is None else width
    if views.c2w is None or views.fovy_deg is None or H is None or W is None:
        raise ValueError("get_rays needs a ViewBatch with c2w, fovy_deg, height and width")
    c2w = views.c2w
    dtype, device = c2w.dtype, c2w.device
    focal = 0.5 * H / torch.tan(0.5 * torch.deg2rad(views.fovy_deg.to(device, dtype)))  # (B,)
    j, i = torch.meshgrid(
        torch.arange(H, dtype=dtype, device=device) + 0.5,
        torch.arange(W, dtype=dtype, device=device) + 0.5,
        indexing="ij",
    )  # pixel centres, (H, W)
    f = focal.view(-1, 1, 1)
    x = (i - 0.5 * W) / f  # (B, H, W)
    y = -(j - 0.5 * H) / f  # row 0 is the top: camera +y
    d_cam = torch.stack([x, y, -torch.ones_like(x)], -1)  # (B, H, W, 3), looks down -z
    d_world = torch.einsum("bij,bhwj->bhwi", c2w[:, :3, :3], d_cam)
    directions = _normalize(d_world)
    origins = c2w[:, None, None, :3, 3].expand_as(directions)
    return origins, directions


def _as_range(r: Sequence[float] | float) -> tuple[float, float]:
    if isinstance(r, (int, float)):
        return float(r), float(r)
    lo, hi = (float(v) for v in r)
    if hi < lo:
        raise ValueError(f"range must be [low, high], got {list(r)}")
    return lo, hi


def check_image_size(cfg, key: str) -> None:
    for name in ("height", "width"):
        checks.number(cfg, name, f"{key}.{name}", lo=1, integer=True)


# A step's rays alone (an origin and a direction, float32) must fit in the device's memory: a
# lower bound of a render's memory, which only refuses what cannot run at all (a typo'd size).
RAY_BYTES = 6 * 4


def check_rays_fit(cfg, key: str, root) -> None:
    """batch_size x height x width rays against the memory of the run's device."""
    rays = int(cfg.get("batch_size") or 1) * int(cfg.height) * int(cfg.width)
    checks.fits_memory(f"{key}.batch_size", cfg.get("batch_size"), rays * RAY_BYTES,
                       f"{rays} rays a step ({key}.batch_size x {key}.height x {key}.width: an origin and "
                       "a direction each)", str(root.get("device")))


class OrbitSampler(checks.Configurable):
    """threestudio-style random orbit cameras (camera groups ``orbit`` and ``multiview``).

    Each step: azimuth stratified over the batch (threestudio's
    ``batch_uniform_azimuth``: sample k in bin k of B equal bins), elevation uniform in
    degrees with probability 1 - ``elevation_sphere_prob`` and uniform on the sphere's
    area otherwise, distance and fovy uniform, then the optional perturbations of the
    camera position / look-at centre / up vector. Defaults are threestudio's (constants
    ``TS_*`` above); ``conf/camera/orbit.yaml`` adapts them to the backbone's world.

    Multi-view sets (``views_per_set`` V > 1, MVDream-threestudio's
    ``RandomMultiviewCameraIterableDataset``): the batch is B / V sets of V consecutive views;
    a set's views sit at azimuths ``a0 + k 360 / V`` (k = 0..V-1) with one elevation, distance,
    field of view and perturbation, each drawn once per set as above (a0 stratified over the
    sets). V = 1 is the single-view sampler, draw for draw.

    n_objects > 1 (several particles sharing one psi): set k renders object
    ``(k + offset) % n_objects`` with a random offset, so a batch of n_objects sets
    renders each object once.
    """

    def __init__(
        self,
        batch_size: int = TS_BATCH_SIZE,
        height: int = 64,
        width: int = 64,
        elevation_range: Sequence[float] = TS_ELEVATION_RANGE,
        azimuth_range: Sequence[float] = TS_AZIMUTH_RANGE,
        distance_range: Sequence[float] = TS_DISTANCE_RANGE,
        fovy_range: Sequence[float] = TS_FOVY_RANGE,
        camera_perturb: float = TS_CAMERA_PERTURB,
        center_perturb: float = TS_CENTER_PERTURB,
        up_perturb: float = TS_UP_PERTURB,
        elevation_sphere_prob: float = TS_ELEVATION_SPHERE_PROB,
        n_objects: int = 1,
        eval_elevation_deg: float = TS_EVAL_ELEVATION,
        eval_distance: float | None = None,
        eval_fovy_deg: float | None = None,
        n_eval_views: int = 24,
        views_per_set: int = 1,
    ):
        self.batch_size, self.height, self.width = int(batch_size), int(height), int(width)
        self.views_per_set = int(views_per_set)
        if self.views_per_set < 1 or self.batch_size % self.views_per_set:
            raise ValueError(f"batch_size={batch_size} must be a multiple of views_per_set={views_per_set}")
        self.elevation_range = _as_range(elevation_range)
        self.azimuth_range = _as_range(azimuth_range)
        self.distance_range = _as_range(distance_range)
        self.fovy_range = _as_range(fovy_range)
        self.camera_perturb, self.center_perturb, self.up_perturb = (
            float(camera_perturb), float(center_perturb), float(up_perturb),
        )
        self.elevation_sphere_prob = float(elevation_sphere_prob)
        self.n_objects = int(n_objects)
        # The turntable defaults to the middle of the training ranges (not threestudio's
        # eval constants, which belong to its own ranges).
        self.eval_elevation_deg = float(eval_elevation_deg)
        self.eval_distance = float(eval_distance) if eval_distance is not None else sum(self.distance_range) / 2
        self.eval_fovy_deg = float(eval_fovy_deg) if eval_fovy_deg is not None else sum(self.fovy_range) / 2
        self.n_eval_views = int(n_eval_views)

    @classmethod
    def check_composition(cls, cfg, key, root):
        check_rays_fit(cfg, key, root)

    @classmethod
    def check_config(cls, cfg, key):
        check_image_size(cfg, key)
        for name in ("batch_size", "n_objects", "n_eval_views"):
            checks.number(cfg, name, f"{key}.{name}", lo=1, integer=True)
        V = checks.number(cfg, "views_per_set", f"{key}.views_per_set", lo=1, integer=True, optional=True) or 1
        checks.require(int(cfg.get("batch_size")) % int(V) == 0, f"{key}.batch_size", cfg.get("batch_size"),
                       f"a multiple of {key}.views_per_set ({V}): the batch is sets of views_per_set views")
        bounds = {"elevation_range": (-90.0, 90.0), "azimuth_range": (-360.0, 360.0),
                  "distance_range": (0.0, None), "fovy_range": (0.0, 180.0)}
        for name, (lo, hi) in bounds.items():
            r = cfg.get(name)
            try:
                a, b = _as_range(r)
                ok = lo <= a <= b and (hi is None or b <= hi)
            except (TypeError, ValueError):
                ok = False
            checks.require(ok, f"{key}.{name}", r, f"[low, high] with {lo} <= low <= high"
                           + ("" if hi is None else f" <= {hi}"))
        for name in ("camera_perturb", "center_perturb", "up_perturb"):
            checks.number(cfg, name, f"{key}.{name}", lo=0.0)
        checks.probability(cfg, "elevation_sphere_prob", f"{key}.elevation_sphere_prob")

    def _uniform(self, r: tuple[float, float], n: int, g: torch.Generator) -> Tensor:
        return r[0] + (r[1] - r[0]) * torch.rand(n, generator=g)

    def sample(self, step: int, generator: torch.Generator) -> ViewBatch:
        V, g = self.views_per_set, generator
        S = self.batch_size // V  # sets; every draw below is one per set
        az_lo, az_hi = self.azimuth_range
        azimuth = az_lo + (az_hi - az_lo) * (torch.rand(S, generator=g) + torch.arange(S)) / S
        # elevation: uniform in degrees, or (with elevation_sphere_prob) uniform in area
        lo, hi = self.elevation_range
        el_deg = self._uniform(self.elevation_range, S, g)
        p = torch.rand(S, generator=g)
        u = self._uniform(((lo + 90.0) / 180.0, (hi + 90.0) / 180.0), S, g)
        el_sphere = torch.rad2deg(torch.asin((2.0 * u - 1.0).clamp(-1.0, 1.0)))
        elevation = torch.where(p < self.elevation_sphere_prob, el_sphere, el_deg)
        distance = self._uniform(self.distance_range, S, g)
        fovy = self._uniform(self.fovy_range, S, g)
        if V > 1:  # set s: views at a0_s + k 360 / V, the rest shared
            per_view = lambda v: v.repeat_interleave(V, 0)  # noqa: E731
            azimuth = per_view(azimuth) + (torch.arange(V) * (360.0 / V)).repeat(S)
            elevation, distance, fovy = per_view(elevation), per_view(distance), per_view(fovy)
        else:
            per_view = lambda v: v  # noqa: E731
        B = azimuth.shape[0]

        pos = orbit_position(azimuth, elevation, distance)
        center = torch.zeros(B, 3)
        up = torch.tensor(WORLD_UP).expand(B, 3).clone()
        if self.camera_perturb > 0:
            pos = pos + per_view((torch.rand(S, 3, generator=g) * 2 - 1) * self.camera_perturb)
        if self.center_perturb > 0:
            center = center + per_view(torch.randn(S, 3, generator=g) * self.center_perturb)
        if self.up_perturb > 0:
            up = up + per_view(torch.randn(S, 3, generator=g) * self.up_perturb)
        c2w = look_at(pos, center, up, azimuth)

        if self.n_objects == 1:
            index = torch.zeros(B, dtype=torch.long)
        else:
            offset = int(torch.randint(self.n_objects, (1,), generator=g))
            index = per_view((torch.arange(S) + offset) % self.n_objects)
        return make_views(azimuth, elevation, distance, fovy, self.height, self.width, index, c2w)

    def eval_views(self, n: int | None = None, object_index: int = 0) -> ViewBatch:
        """Deterministic turntable: n views at azimuths 0, 360/n, ... (front first),
        wrapped to (-180, 180], at the fixed eval elevation / distance / fovy."""
        n = self.n_eval_views if n is None else int(n)
        az = turntable_azimuths(n)
        full = lambda v: torch.full((n,), float(v))  # noqa: E731
        index = torch.full((n,), int(object_index), dtype=torch.long)
        return make_views(
            az, full(self.eval_elevation_deg), full(self.eval_distance), full(self.eval_fovy_deg),
            self.height, self.width, index,
        )


class FixedSampler(checks.Configurable):
    """One fixed camera (``representation=image``): every step renders the same view.

    The 2D experiments optimize an image directly, so the "camera" only decides the
    view prompt (front by default) and gives psi a constant camera feature. With
    n_objects > 1 (several images), a batch holds objects 0..batch_size-1 (mod n).
    """

    def __init__(
        self,
        batch_size: int | None = None,
        height: int = 64,
        width: int = 64,
        azimuth_deg: float = 0.0,
        elevation_deg: float = 0.0,
        distance: float = TS_DISTANCE_RANGE[1],
        fovy_deg: float = TS_FOVY_RANGE[0],
        n_objects: int = 1,
    ):
        self.n_objects = int(n_objects)
        self.batch_size = self.n_objects if batch_size is None else int(batch_size)
        self.height, self.width = int(height), int(width)
        self.azimuth_deg, self.elevation_deg = float(azimuth_deg), float(elevation_deg)
        self.distance, self.fovy_deg = float(distance), float(fovy_deg)

    @classmethod
    def check_config(cls, cfg, key):
        check_image_size(cfg, key)
        checks.number(cfg, "n_objects", f"{key}.n_objects", lo=1, integer=True)
        checks.number(cfg, "batch_size", f"{key}.batch_size", lo=1, integer=True, optional=True)

    def _batch(self, n: int) -> ViewBatch:
        full = lambda v: torch.full((n,), float(v))  # noqa: E731
        index = torch.arange(n) % self.n_objects
        return make_views(
            full(self.azimuth_deg), full(self.elevation_deg), full(self.distance), full(self.fovy_deg),
            self.height, self.width, index,
        )

    def sample(self, step: int, generator: torch.Generator) -> ViewBatch:
        return self._batch(self.batch_size)

    def eval_views(self, n: int | None = None) -> ViewBatch:
        return self._batch(self.n_objects if n is None else int(n))


def turntable_azimuths(n: int) -> Tensor:
    """(n,) azimuths of ``OrbitSampler.eval_views`` (degrees, front first)."""
    az = torch.arange(n, dtype=torch.float32) * (360.0 / n)
    return torch.where(az > 180.0, az - 360.0, az)


__all__ = [
    "FixedSampler",
    "OrbitSampler",
    "get_rays",
    "look_at",
    "make_views",
    "orbit_position",
    "turntable_azimuths",
]
