"""FSD's world-map noise (src/guidance/noise_worldmap.py)."""

from __future__ import annotations

import torch

from src.cameras_orbit import make_views
from src.guidance.noise_worldmap import crop_periodic, map_size, patch_centre, world_map_noise


def cams(az, el=None, index=None):
    az = torch.as_tensor(az, dtype=torch.float32)
    n = az.shape[0]
    el = torch.zeros(n) if el is None else torch.as_tensor(el, dtype=torch.float32)
    full = lambda v: torch.full((n,), float(v))  # noqa: E731
    return make_views(az, el, full(2.0), full(40.0), 16, 16, index=index)


def opaque(n, h=16, w=16, value=1.0):
    return torch.full((n, h, w, 1), value)


def test_map_size_follows_patch_angle():
    assert map_size(8, 8, 180.0) == (8, 16)  # (180/T) h x (360/T) w
    assert map_size(8, 8, 90.0) == (16, 32)


def test_beta_one_is_deterministic_per_camera():
    v = cams([0.0, 90.0])
    a = world_map_noise((2, 4, 8, 8), v, opaque(2), 1.0, seed=3, generator=torch.Generator().manual_seed(0))
    b = world_map_noise((2, 4, 8, 8), v, opaque(2), 1.0, seed=3, generator=torch.Generator().manual_seed(99))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a[0], a[1])  # different cameras, different patches
    c = world_map_noise((2, 4, 8, 8), v, opaque(2), 1.0, seed=4, generator=None)
    assert not torch.allclose(a, c)  # the seed picks the map


def test_objects_get_their_own_maps():
    v = cams([30.0, 30.0], index=torch.tensor([0, 1]))
    e = world_map_noise((2, 3, 8, 8), v, opaque(2), 1.0, seed=0, generator=None)
    assert not torch.allclose(e[0], e[1])


def test_periodic_in_azimuth():
    v = cams([0.0, 360.0, -180.0, 180.0], el=[10.0] * 4)
    e = world_map_noise((4, 3, 8, 8), v, opaque(4), 1.0, seed=0, generator=None)
    torch.testing.assert_close(e[0], e[1])
    torch.testing.assert_close(e[2], e[3])


def test_patch_moves_with_azimuth():
    """A camera 1 map pixel further in azimuth sees the same noise shifted by one column."""
    h = w = 8
    H, W = map_size(h, w, 180.0)
    step_deg = 360.0 / W
    v = cams([0.0, step_deg])
    e = world_map_noise((2, 1, h, w), v, opaque(2), 1.0, seed=0, generator=None)
    torch.testing.assert_close(e[0, :, :, 1:], e[1, :, :, :-1])


def test_crop_wraps_and_centre():
    world = torch.arange(4 * 6, dtype=torch.float32).view(1, 4, 6)
    p = crop_periodic(world, 0, 0, 2, 2)  # rows -1, 0; cols -1, 0
    torch.testing.assert_close(p[0], torch.tensor([[23.0, 18.0], [5.0, 0.0]]))
    assert patch_centre(0.0, 90.0, 8, 16) == (0, 0)  # straight overhead: polar 0
    assert patch_centre(180.0, 0.0, 8, 16) == (4, 8)


def test_mask_selects_background_noise():
    v = cams([0.0, 120.0])
    bg = world_map_noise((2, 3, 8, 8), v, opaque(2, value=0.0), 1.0, seed=0, generator=None)
    torch.testing.assert_close(bg[0], bg[1])  # background noise is camera-independent
    fg = world_map_noise((2, 3, 8, 8), v, opaque(2), 1.0, seed=0, generator=None)
    assert not torch.allclose(fg[0], bg[0])
    # half-covered render (16 px) -> the mask is resized to the 8 px backbone space
    half = opaque(1)
    half[:, :, :8] = 0.0
    mix = world_map_noise((1, 3, 8, 8), cams([0.0]), half, 1.0, seed=0, generator=None)
    torch.testing.assert_close(mix[0, :, :, :4], bg[0, :, :, :4])
    torch.testing.assert_close(mix[0, :, :, 4:], fg[0, :, :, 4:])


def test_beta_zero_is_fresh_noise():
    v = cams([0.0, 90.0])
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    e = world_map_noise((2, 4, 8, 8), v, opaque(2), 0.0, seed=0, generator=g1)
    torch.testing.assert_close(e, torch.randn(2, 4, 8, 8, generator=g2))


def test_unit_variance_for_any_beta_and_mask():
    n = 64
    az = torch.linspace(-180, 180, n)
    el = torch.linspace(-10, 80, n)
    op = (torch.rand(n, 32, 32, 1, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    for beta in (0.0, 0.3, 1.0):
        e = world_map_noise((n, 4, 32, 32), cams(az, el), op, beta, seed=0,
                            generator=torch.Generator().manual_seed(2))
        # 262k samples (correlated across cameras for beta > 0, hence the loose bound)
        assert abs(float(e.mean())) < 0.05
        assert abs(float(e.std()) - 1.0) < 0.05
