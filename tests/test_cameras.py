"""Orbit camera model (src/cameras_orbit.py): geometry of rays, samplers, configs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from src.api import compose
from src.cameras import VIEW_NAMES, view_prompt_index
from src.cameras_orbit import (
    FixedSampler,
    OrbitSampler,
    get_rays,
    make_views,
    orbit_position,
)

CONF = Path(__file__).resolve().parents[1] / "conf"


def _views(az, el, dist=2.0, fovy=40.0, H=5, W=5):
    az, el = torch.tensor(az, dtype=torch.float32), torch.tensor(el, dtype=torch.float32)
    n = az.numel()
    return make_views(az, el, torch.full((n,), dist), torch.full((n,), fovy), H, W)


def test_center_ray_hits_origin():
    # odd H, W: the middle pixel's centre is the principal point
    v = _views([0.0, 37.0, -120.0, 180.0, 10.0], [0.0, 20.0, -10.0, 60.0, 89.0], dist=1.7, H=7, W=9)
    o, d = get_rays(v)
    assert o.shape == d.shape == (5, 7, 9, 3)
    torch.testing.assert_close(d.norm(dim=-1), torch.ones(5, 7, 9))
    oc, dc = o[:, 3, 4], d[:, 3, 4]
    closest = oc - (oc * dc).sum(-1, keepdim=True) * dc  # point of the ray nearest the origin
    assert closest.norm(dim=-1).max() < 1e-5
    assert ((oc * dc).sum(-1) < 0).all()  # the origin is in front of the camera


def test_c2w_is_a_rotation_and_opengl():
    v = _views([0.0, 90.0, -45.0, 180.0], [0.0, 30.0, 90.0, -90.0])
    R, pos = v.c2w[:, :3, :3], v.c2w[:, :3, 3]
    assert torch.isfinite(v.c2w).all()  # straight overhead / below: no NaN
    torch.testing.assert_close(R.transpose(1, 2) @ R, torch.eye(3).expand(4, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(4), atol=1e-5, rtol=0)
    # camera looks down its -z axis, at the origin; z-up world: azimuth 0 sits on +x
    torch.testing.assert_close(-R[:, :, 2], -pos / pos.norm(dim=-1, keepdim=True), atol=1e-5, rtol=0)
    torch.testing.assert_close(pos[0], torch.tensor([2.0, 0.0, 0.0]), atol=1e-6, rtol=0)
    assert R[1, 2, 1] > 0  # at elevation 30 the camera's up has a world +z component
    assert v.cam.shape == (4, 16)
    torch.testing.assert_close(v.cam, v.c2w.reshape(4, 16))


def test_pinhole_intrinsics_and_image_orientation():
    H = W = 9
    fovy = 50.0
    v = _views([30.0], [10.0], fovy=fovy, H=H, W=W)
    _, d = get_rays(v)
    R = v.c2w[0, :3, :3]
    d_cam = d[0] @ R  # world -> camera coordinates (R orthonormal)
    focal = 0.5 * H / math.tan(math.radians(fovy) / 2)
    # top-centre pixel: up component / forward component = (H/2 - 0.5) / focal
    top = d_cam[0, W // 2]
    assert top[1] > 0 and top[2] < 0  # row 0 is the top of the picture, looking down -z
    assert abs(top[1] / -top[2] - (H / 2 - 0.5) / focal) < 1e-5
    right = d_cam[H // 2, -1]
    assert right[0] > 0 and abs(right[0] / -right[2] - (W / 2 - 0.5) / focal) < 1e-5
    # get_rays at another resolution keeps the field of view (supersampling)
    _, d2 = get_rays(v, 2 * H, 2 * W)
    assert d2.shape == (1, 2 * H, 2 * W, 3)
    edge2 = (d2[0, 0, W] @ R)
    assert abs(edge2[1] / -edge2[2] - (H - 0.5) / (2 * focal)) < 1e-5


def test_sampler_deterministic_stratified_and_in_range():
    s = OrbitSampler(batch_size=8, height=16, width=16, elevation_range=(0, 75),
                     distance_range=(1.5, 2.5), fovy_range=(30, 50),
                     camera_perturb=0, center_perturb=0, up_perturb=0)
    a = s.sample(0, torch.Generator().manual_seed(3))
    b = s.sample(0, torch.Generator().manual_seed(3))
    c = s.sample(0, torch.Generator().manual_seed(4))
    for f in ("c2w", "azimuth_deg", "elevation_deg", "distance", "fovy_deg", "view_idx", "index"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    assert not torch.equal(a.azimuth_deg, c.azimuth_deg)
    # one azimuth in each of the 8 bins of 45 deg (threestudio's batch_uniform_azimuth)
    bins = torch.floor((a.azimuth_deg + 180.0) / 45.0).long()
    assert sorted(bins.tolist()) == list(range(8))
    assert ((a.elevation_deg >= 0) & (a.elevation_deg <= 75)).all()
    assert ((a.distance >= 1.5) & (a.distance <= 2.5)).all()
    assert ((a.fovy_deg >= 30) & (a.fovy_deg <= 50)).all()
    assert torch.equal(a.view_idx, view_prompt_index(a.azimuth_deg, a.elevation_deg))
    assert torch.equal(a.index, torch.zeros(8, dtype=torch.long))
    torch.testing.assert_close(a.c2w[:, :3, 3], orbit_position(a.azimuth_deg, a.elevation_deg, a.distance))
    assert (a.height, a.width) == (16, 16) and a.cam.shape == (8, 16)


def test_sampler_perturbations_and_objects():
    s = OrbitSampler(batch_size=4, n_objects=4)  # threestudio defaults incl. perturbations
    v = s.sample(0, torch.Generator().manual_seed(0))
    assert sorted(v.index.tolist()) == [0, 1, 2, 3]  # each particle once per batch
    R = v.c2w[:, :3, :3]
    torch.testing.assert_close(R.transpose(1, 2) @ R, torch.eye(3).expand(4, 3, 3), atol=1e-5, rtol=0)


def _orbit_sample_before_multiview(s: OrbitSampler, g: torch.Generator):
    """OrbitSampler.sample as it was before views_per_set (2026-12-07, 13e70db), kept verbatim as
    the reference that views_per_set=1 must reproduce draw for draw."""
    from src.cameras_orbit import WORLD_UP, look_at

    B = s.batch_size
    az_lo, az_hi = s.azimuth_range
    azimuth = az_lo + (az_hi - az_lo) * (torch.rand(B, generator=g) + torch.arange(B)) / B
    lo, hi = s.elevation_range
    el_deg = s._uniform(s.elevation_range, B, g)
    p = torch.rand(B, generator=g)
    u = s._uniform(((lo + 90.0) / 180.0, (hi + 90.0) / 180.0), B, g)
    el_sphere = torch.rad2deg(torch.asin((2.0 * u - 1.0).clamp(-1.0, 1.0)))
    elevation = torch.where(p < s.elevation_sphere_prob, el_sphere, el_deg)
    distance = s._uniform(s.distance_range, B, g)
    fovy = s._uniform(s.fovy_range, B, g)
    pos = orbit_position(azimuth, elevation, distance)
    center = torch.zeros(B, 3)
    up = torch.tensor(WORLD_UP).expand(B, 3).clone()
    if s.camera_perturb > 0:
        pos = pos + (torch.rand(B, 3, generator=g) * 2 - 1) * s.camera_perturb
    if s.center_perturb > 0:
        center = center + torch.randn(B, 3, generator=g) * s.center_perturb
    if s.up_perturb > 0:
        up = up + torch.randn(B, 3, generator=g) * s.up_perturb
    c2w = look_at(pos, center, up, azimuth)
    if s.n_objects == 1:
        index = torch.zeros(B, dtype=torch.long)
    else:
        offset = int(torch.randint(s.n_objects, (1,), generator=g))
        index = (torch.arange(B) + offset) % s.n_objects
    return make_views(azimuth, elevation, distance, fovy, s.height, s.width, index, c2w)


@pytest.mark.parametrize("kw", [dict(batch_size=1), dict(batch_size=6, n_objects=3),
                                dict(batch_size=4, camera_perturb=0, center_perturb=0, up_perturb=0)])
def test_one_view_per_set_is_the_orbit_sampler(kw):
    """views_per_set=1 (camera=orbit) is the sampler before multi-view sets, draw for draw."""
    s = OrbitSampler(height=8, width=8, views_per_set=1, **kw)
    for step in range(3):
        a = s.sample(step, torch.Generator().manual_seed(step))
        b = _orbit_sample_before_multiview(s, torch.Generator().manual_seed(step))
        for f in ("c2w", "cam", "azimuth_deg", "elevation_deg", "distance", "fovy_deg", "view_idx", "index"):
            assert torch.equal(getattr(a, f), getattr(b, f)), f


def test_multiview_sets():
    """views_per_set=V: B / V sets of V consecutive views at a0 + k 360 / V, one elevation, distance,
    field of view and perturbation per set (MVDream-threestudio's random multi-view camera), a0
    stratified over the sets, one object per set."""
    V, S = 4, 3
    s = OrbitSampler(batch_size=V * S, height=8, width=8, views_per_set=V, n_objects=S)
    v = s.sample(0, torch.Generator().manual_seed(1))
    az = v.azimuth_deg.view(S, V)
    torch.testing.assert_close(az - az[:, :1], torch.tensor([0.0, 90.0, 180.0, 270.0]).expand(S, V))
    bins = torch.floor((az[:, 0] + 180.0) / (360.0 / S)).long()
    assert bins.tolist() == list(range(S))  # a0 stratified over the sets
    for f in ("elevation_deg", "distance", "fovy_deg", "index"):
        per_set = getattr(v, f).view(S, V)
        assert torch.equal(per_set, per_set[:, :1].expand(S, V)), f
    assert sorted(v.index.view(S, V)[:, 0].tolist()) == [0, 1, 2]
    # the perturbations are shared too: each view's camera centre is its set's orbit position
    # rotated by k 360 / V about z plus the set's one position offset
    unperturbed = orbit_position(v.azimuth_deg, v.elevation_deg, v.distance)
    offset = (v.c2w[:, :3, 3] - unperturbed).view(S, V, 3)
    torch.testing.assert_close(offset, offset[:, :1].expand(S, V, 3), atol=1e-5, rtol=0)
    assert float(offset.abs().max()) > 0  # threestudio's camera_perturb is on by default
    with pytest.raises(ValueError, match="batch_size=6 must be a multiple of views_per_set=4"):
        OrbitSampler(batch_size=6, views_per_set=4)


def test_multiview_camera_config():
    """camera=multiview is orbit with sets of 4 views, one set per step; the check names the key."""
    from src.checks import ConfigError

    cfg = compose(["camera=multiview"])
    assert cfg.camera.views_per_set == 4 and cfg.camera.batch_size == 4
    assert cfg.camera._target_ == "src.cameras_orbit.OrbitSampler"
    bad = OmegaConf.merge(cfg.camera, {"batch_size": 6})
    with pytest.raises(ConfigError, match=r"camera.batch_size.*a multiple of camera.views_per_set \(4\)"):
        OrbitSampler.check_config(bad, "camera")


def test_eval_views_turntable():
    s = OrbitSampler(height=8, width=8, distance_range=(2, 2), fovy_range=(40, 40), eval_elevation_deg=20)
    v = s.eval_views(8)
    w = s.eval_views(8)
    assert torch.equal(v.c2w, w.c2w)
    torch.testing.assert_close(v.azimuth_deg, torch.tensor([0.0, 45, 90, 135, 180, -135, -90, -45]))
    assert (v.elevation_deg == 20).all() and (v.distance == 2).all() and (v.fovy_deg == 40).all()
    assert v.view_idx[0] == VIEW_NAMES.index("front") and v.view_idx[4] == VIEW_NAMES.index("back")
    assert len(s.eval_views()) == s.n_eval_views


def test_fixed_sampler():
    s = FixedSampler(height=8, width=8, n_objects=3)
    a, b = s.sample(0, torch.Generator().manual_seed(0)), s.sample(5, torch.Generator().manual_seed(1))
    assert torch.equal(a.c2w, b.c2w) and a.index.tolist() == [0, 1, 2]
    assert (a.view_idx == VIEW_NAMES.index("front")).all()


@pytest.mark.parametrize("representation", ["nerf", "gaussians", "image"])
def test_camera_configs_follow_the_world(representation):
    """Each representation picks its camera model; conf/camera/*.yaml read the ShapesWorld's
    resolution, elevations, distance, fov."""
    cfg = compose([f"representation={representation}"])
    cam, backbone = OmegaConf.to_container(cfg.camera, resolve=True), cfg.backbone
    expected = "FixedSampler" if representation == "image" else "OrbitSampler"
    assert cam["_target_"] == f"src.cameras_orbit.{expected}"
    assert cam["height"] == cam["width"] == backbone.resolution
    if representation == "image":
        assert cam["distance"] == backbone.distance and cam["fovy_deg"] == backbone.fovy_deg
    else:
        assert cam["elevation_range"] == list(backbone.elevation_range)
        assert cam["distance_range"] == [backbone.distance] * 2
        assert cam["fovy_range"] == [backbone.fovy_deg] * 2
    # without a world (Stable Diffusion) the threestudio defaults apply
    bare = OmegaConf.to_container(compose([f"representation={representation}", "backbone=sd21"]).camera,
                                  resolve=True)
    if representation != "image":
        assert bare["elevation_range"] == [-10.0, 90.0] and bare["fovy_range"] == [40.0, 70.0]
