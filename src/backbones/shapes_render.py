"""ShapesWorld's analytic renderer: sphere-traced SDFs, Lambert shading, pure torch.

Rays come from ``src.cameras_orbit.get_rays``, the camera model the trainer samples
and the NeRF renders through, so a data image and a NeRF render at the same
``ViewBatch`` see the same picture. Objects are centred at the origin of the z-up
world, sized to fit in ``BOUND_RADIUS``; the optional "face" marker is a dark disc on
the +x side (the side azimuth 0, the "front view", looks at).

Shading is Lambert under a light fixed in the world (not a headlight): the radiance
of a surface point then does not depend on the viewer, which is what a NeRF's
view-independent color field can represent exactly.

Rendering is split in two so that colors cost nothing: ``render_coverage`` returns,
per pixel, the pooled coefficients (albedo, marker, background) and ``colorize``
combines them with any RGB: supersampled anti-aliasing is a mean over sub-pixels and
is linear in the colors, so one geometry pass serves every color of the world.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from src.cameras import ViewBatch
from src.cameras_orbit import get_rays

# Version of the image formation below: part of the dataset cache key, bump on change.
RENDERER_VERSION = 1

# --- geometry (world units; the camera orbit of the default world is at distance 2) --
SPHERE_RADIUS = 0.5
CUBE_HALF = 0.4  # corner at 0.69 from the centre
CYLINDER_RADIUS, CYLINDER_HALF_HEIGHT = 0.4, 0.45
CONE_RADIUS, CONE_HALF_HEIGHT = 0.5, 0.5  # base at z = -0.5, apex at z = +0.5
TORUS_MAJOR, TORUS_MINOR = 0.4, 0.15
BOUND_RADIUS = 0.9  # every shape lies inside this sphere: marching starts on it

# --- marker: a dark disc seen along +x ("the face") ----------------------------------
MARKER_RADIUS = 0.2  # radius of the disc, measured across the marker axis
MARKER_MIN_FACING = 0.2  # cos(angle) between normal and marker axis: no wrap-around
MARKER_RGB = (0.05, 0.05, 0.05)

# --- shading ---------------------------------------------------------------------------
LIGHT_DIR = (0.5, 0.3, 1.0)  # towards the light, mostly from above and the front
AMBIENT, DIFFUSE = 0.35, 0.65  # shade in [0.35, 1]: the dark side keeps its color

# --- sphere tracing ----------------------------------------------------------------------
MARCH_STEPS = 64
HIT_EPS = 2e-3  # |sdf| below this after marching = surface hit
NORMAL_H = 1e-3  # central-difference step of the normal
COMPACT_EVERY = 4  # steps between removals of converged / escaped rays

# Named colors a world may use (linear-ish sRGB in [0, 1]); the world picks a subset,
# and only its subset is vocabulary.
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.15, 0.15),
    "green": (0.2, 0.7, 0.25),
    "blue": (0.2, 0.35, 0.9),
    "yellow": (0.9, 0.8, 0.15),
    "orange": (0.95, 0.5, 0.1),
    "purple": (0.6, 0.25, 0.8),
    "cyan": (0.15, 0.75, 0.8),
    "white": (0.92, 0.92, 0.92),
    "gray": (0.5, 0.5, 0.5),
}


def _length2(a: Tensor, b: Tensor) -> Tensor:
    return torch.sqrt(a * a + b * b)


def sdf_sphere(p: Tensor) -> Tensor:
    return p.norm(dim=-1) - SPHERE_RADIUS


def sdf_cube(p: Tensor) -> Tensor:
    q = p.abs() - CUBE_HALF
    return q.clamp_min(0).norm(dim=-1) + q.max(dim=-1).values.clamp_max(0)


def sdf_cylinder(p: Tensor) -> Tensor:
    """Capped cylinder along z (exact, iq's sdCappedCylinder)."""
    dx = _length2(p[..., 0], p[..., 1]) - CYLINDER_RADIUS
    dz = p[..., 2].abs() - CYLINDER_HALF_HEIGHT
    return torch.maximum(dx, dz).clamp_max(0) + _length2(dx.clamp_min(0), dz.clamp_min(0))


def sdf_cone(p: Tensor) -> Tensor:
    """Solid cone along z, base radius CONE_RADIUS at -h, apex at +h (exact, iq's sdCappedCone, r2=0)."""
    h, r1 = CONE_HALF_HEIGHT, CONE_RADIUS
    qx, qy = _length2(p[..., 0], p[..., 1]), p[..., 2]
    k1x, k1y = 0.0, h  # (r2, h)
    k2x, k2y = -r1, 2.0 * h  # (r2 - r1, 2h)
    ca_x = qx - torch.minimum(qx, torch.where(qy < 0, torch.full_like(qx, r1), torch.zeros_like(qx)))
    ca_y = qy.abs() - h
    u = (((k1x - qx) * k2x + (k1y - qy) * k2y) / (k2x * k2x + k2y * k2y)).clamp(0, 1)
    cb_x, cb_y = qx - k1x + k2x * u, qy - k1y + k2y * u
    inside = (cb_x < 0) & (ca_y < 0)
    d = torch.sqrt(torch.minimum(ca_x * ca_x + ca_y * ca_y, cb_x * cb_x + cb_y * cb_y))
    return torch.where(inside, -d, d)


def sdf_torus(p: Tensor) -> Tensor:
    """Torus around z (ring in the xy plane)."""
    return _length2(_length2(p[..., 0], p[..., 1]) - TORUS_MAJOR, p[..., 2]) - TORUS_MINOR


SDFS: dict[str, Callable[[Tensor], Tensor]] = {
    "sphere": sdf_sphere,
    "cube": sdf_cube,
    "cylinder": sdf_cylinder,
    "cone": sdf_cone,
    "torus": sdf_torus,
}


def sphere_trace(
    origins: Tensor, dirs: Tensor, sdf: Callable[[Tensor], Tensor], steps: int = MARCH_STEPS
) -> tuple[Tensor, Tensor]:
    """First surface hit along each ray; (R, 3), (R, 3) unit -> (hit (R,) bool, point (R, 3)).

    Starts where the ray enters the bounding sphere and takes at most ``steps``
    sphere-tracing steps; rays that have converged (|sdf| < HIT_EPS / 10) or left the
    bound drop out of the active set, so the cost is that of the few grazing rays.
    """
    b = (origins * dirs).sum(-1)
    c = (origins * origins).sum(-1) - BOUND_RADIUS**2
    disc = b * b - c
    sq = disc.clamp_min(0).sqrt()
    t_near, t_far = (-b - sq).clamp_min(0), -b + sq
    t = t_near.clone()
    act = (disc > 0).nonzero().squeeze(1)  # rays that enter the bound, compacted
    o_a, d_a, t_a, tf_a = origins[act], dirs[act], t[act], t_far[act]
    for k in range(steps):
        if act.numel() == 0:
            break
        dist = sdf(o_a + t_a[:, None] * d_a)
        t_a = torch.minimum(t_a + dist, tf_a + 1.0)  # escaped rays stop beyond the bound
        if k % COMPACT_EVERY == COMPACT_EVERY - 1:  # gathers are costly: compact now and then
            done = (dist.abs() <= 0.1 * HIT_EPS) | (t_a > tf_a)
            t[act[done]] = t_a[done]
            keep = ~done
            act, o_a, d_a, t_a, tf_a = act[keep], o_a[keep], d_a[keep], t_a[keep], tf_a[keep]
    t[act] = t_a
    p = origins + t[:, None] * dirs
    hit = (disc > 0) & (t <= t_far) & (sdf(p).abs() < HIT_EPS)
    return hit, p


def sdf_normal(p: Tensor, sdf: Callable[[Tensor], Tensor]) -> Tensor:
    """Unit outward normals by central differences; (R, 3) -> (R, 3)."""
    eye = torch.eye(3, dtype=p.dtype, device=p.device) * NORMAL_H
    g = torch.stack([sdf(p + e) - sdf(p - e) for e in eye], -1)
    return g / g.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def marker_mask(p: Tensor, n: Tensor, axes: Sequence[Sequence[float]], radius: float = MARKER_RADIUS) -> Tensor:
    """Surface points painted by a marker disc of ``radius`` around any of the unit ``axes``; -> (R,) bool."""
    m = torch.zeros(p.shape[0], dtype=torch.bool, device=p.device)
    for a in axes:
        u = torch.tensor(a, dtype=p.dtype, device=p.device)
        u = u / u.norm()
        along = (p * u).sum(-1)
        across = (p - along[:, None] * u).norm(dim=-1)
        m |= (along > 0) & ((n * u).sum(-1) > MARKER_MIN_FACING) & (across < radius)
    return m


def lambert(n: Tensor, light_dir: Sequence[float] = LIGHT_DIR) -> Tensor:
    """Shade factor in [AMBIENT, 1] for unit normals (R, 3) -> (R,), lit from ``light_dir``."""
    light = torch.tensor(list(light_dir), dtype=n.dtype, device=n.device)
    light = light / light.norm()
    return AMBIENT + DIFFUSE * (n @ light).clamp_min(0)


def render_coverage(
    shape: str,
    views: ViewBatch,
    height: int | None = None,
    width: int | None = None,
    markers: Sequence[Sequence[float]] = (),
    supersample: int = 2,
    chunk_views: int = 16,
    light_dir: Sequence[float] = LIGHT_DIR,
    marker_radius: float = MARKER_RADIUS,
) -> Tensor:
    """Pooled per-pixel coefficients of one shape seen by each view.

    Returns (B, H, W, 4): [albedo weight, marker weight, background weight, marker
    coverage] where, per pixel, the weights are the sub-pixel means of
    ``hit * (1 - marker) * shade``, ``hit * marker * shade``, ``1 - hit`` and
    ``hit * marker``. The image of color c is ``colorize(cov, c, background)``.
    """
    H = views.height if height is None else height
    W = views.width if width is None else width
    sdf = SDFS[shape]
    out = []
    B = len(views)
    for s in range(0, B, chunk_views):
        idx = torch.arange(s, min(s + chunk_views, B))
        sub = ViewBatch(
            index=views.index[idx], view_idx=views.view_idx[idx], cam=views.cam[idx],
            c2w=views.c2w[idx].float(), fovy_deg=views.fovy_deg[idx], height=H, width=W,
        )
        o, d = get_rays(sub, H * supersample, W * supersample)  # (b, Hs, Ws, 3)
        shp = o.shape[:-1]
        o, d = o.reshape(-1, 3), d.reshape(-1, 3)
        hit, p = sphere_trace(o, d, sdf)
        n = sdf_normal(p, sdf)
        shade = lambert(n, light_dir)
        mark = marker_mask(p, n, markers, marker_radius) & hit if markers else torch.zeros_like(hit)
        hitf, markf = hit.float(), mark.float()
        coef = torch.stack(
            [hitf * (1 - markf) * shade, markf * shade, 1 - hitf, markf], -1
        ).reshape(*shp, 4)
        # mean over the supersample x supersample sub-pixels of each pixel
        coef = F.avg_pool2d(coef.permute(0, 3, 1, 2), supersample).permute(0, 2, 3, 1)
        out.append(coef)
    return torch.cat(out)


def colorize(coverage: Tensor, rgb: Tensor, background: Tensor, marker_rgb: Tensor | None = None) -> Tensor:
    """Images from coverage (..., H, W, 4) and albedo rgb (..., 3) -> (..., H, W, 3) in [0, 1].

    ``rgb`` broadcasts against the coverage's leading dims (one color per image).
    """
    if marker_rgb is None:
        marker_rgb = torch.tensor(MARKER_RGB, dtype=coverage.dtype, device=coverage.device)
    c = rgb[..., None, None, :].to(coverage)
    return (
        coverage[..., 0:1] * c
        + coverage[..., 1:2] * marker_rgb.to(coverage)
        + coverage[..., 2:3] * background.to(coverage)
    )
