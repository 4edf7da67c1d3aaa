"""representation=gaussians on the CPU: the pure-torch splatting path (src/representations/splat.py).

The CUDA comparison against gsplat's rasterizer is tests/test_gaussians_cuda.py (-m cuda).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from src.cameras_orbit import get_rays, make_views
from src.representations import splat
from src.representations.gaussians import Gaussians
from tests._nerf_fixtures import views


def one_view(res: int, azimuth=0.0, elevation=0.0, distance=2.0, fovy=40.0, H=None):
    full = lambda v: torch.tensor([float(v)])  # noqa: E731
    return make_views(full(azimuth), full(elevation), full(distance), full(fovy), H or res, res)


def single_gaussian(scale: float, opacity: float, position=(0.0, 0.0, 0.0)) -> Gaussians:
    gs = Gaussians(n_gaussians=2, background={"kind": "constant", "color": [0.0, 0.0, 0.0]})
    with torch.no_grad():  # Gaussian 1 is moved far behind the camera (culled)
        gs.means.copy_(torch.tensor([[position, (100.0, 0.0, 0.0)]]))
        gs.log_scales.fill_(math.log(scale))
        gs.quats.copy_(torch.tensor([[[1.0, 0, 0, 0], [1.0, 0, 0, 0]]]))
        gs.opacity_logits.fill_(math.log(opacity / (1 - opacity)))
        gs.color_logits.fill_(2.0)
    return gs


def test_render_shapes_dtypes_and_ranges():
    gs = Gaussians(n_gaussians=256, background={"kind": "learned", "color": [1.0, 1.0, 1.0]})
    with torch.no_grad():
        out = gs.render(views(3, res=16))
    assert out.rgb.shape == (3, 16, 16, 3) and out.opacity.shape == (3, 16, 16, 1)
    assert out.depth.shape == (3, 16, 16, 1)
    assert out.rgb.dtype == out.opacity.dtype == torch.float32
    assert 0 <= float(out.rgb.min()) and float(out.rgb.max()) <= 1
    assert 0 <= float(out.opacity.min()) and float(out.opacity.max()) < 1
    # the init ball (radius 0.5, opacity 0.8) covers the centre, is absent from the corners
    assert float(out.opacity[:, 8, 8].min()) > 0.9 and float(out.opacity[:, 0, 0].max()) < 0.05
    hit = out.opacity[..., 0] > 0.5  # depth of the opaque part ~ camera distance 2 - ball
    assert 1.4 < float(out.depth[..., 0][hit].min()) and float(out.depth[..., 0][hit].max()) < 2.5


def test_two_objects_render_their_own_views():
    gs = Gaussians(n_objects=2, n_gaussians=64)
    with torch.no_grad():
        gs.means[1] += torch.tensor([0.0, 0.0, 5.0])  # object 1 is out of view
    v = views(2, res=8)
    v.index = torch.tensor([0, 1])
    out = gs.render(v)
    assert float(out.opacity[0].max()) > 0.5 and float(out.opacity[1].max()) < 1e-3


def test_single_isotropic_gaussian_is_the_analytic_blob():
    """A Gaussian of std s at the origin, camera at distance d on the optical axis: the
    alpha image is o exp(-r^2 / (2 (f^2 s^2 / d^2 + eps2d))) (r in px from the centre),
    exactly, wherever it is >= 1/255; the peak (odd image: a pixel centre on the axis) is o."""
    s, o, d, res, fovy = 0.05, 0.7, 2.0, 33, 40.0
    gs = single_gaussian(s, o)
    out = gs.render(one_view(res, azimuth=30.0, elevation=20.0, distance=d, fovy=fovy))
    a = out.opacity[0, ..., 0]
    c = res // 2
    assert float(a[c, c]) == pytest.approx(o, abs=1e-6)
    assert float(a.max()) == pytest.approx(o, abs=1e-6)
    # symmetric: left-right, up-down, transpose (isotropic, square pixels); 5e-6 = a few
    # float32 ulps (the mean projects to 16.5 +- round-off, the camera is oblique)
    torch.testing.assert_close(a, a.flip(0), atol=5e-6, rtol=0)
    torch.testing.assert_close(a, a.flip(1), atol=5e-6, rtol=0)
    torch.testing.assert_close(a, a.T, atol=5e-6, rtol=0)
    f = 0.5 * res / math.tan(math.radians(fovy / 2))
    var = (f * s / d) ** 2 + splat.EPS2D
    yy, xx = torch.meshgrid(torch.arange(res) - c, torch.arange(res) - c, indexing="ij")
    ana = o * torch.exp(-(xx**2 + yy**2) / (2 * var))
    ana = torch.where(ana >= splat.ALPHA_THRESHOLD, ana, torch.zeros_like(ana))
    torch.testing.assert_close(a, ana.float(), atol=5e-6, rtol=0)
    # rgb = sigmoid(2) alpha + background (1 - alpha) (Background clamps black to 1e-3); depth = d
    bg = 1e-3
    torch.testing.assert_close(out.rgb[0, ..., 0], torch.sigmoid(torch.tensor(2.0)) * a + bg * (1 - a),
                               atol=5e-6, rtol=0)
    assert float(out.depth[0, c, c, 0]) == pytest.approx(d, abs=1e-5)


def test_camera_conversion_matches_get_rays():
    """A small Gaussian off-centre lands on the pixel whose get_rays ray passes nearest it
    (checks the OpenGL -> OpenCV viewmat and the intrinsics against the NeRF's rays)."""
    v = one_view(24, azimuth=40.0, elevation=25.0, distance=2.0, fovy=50.0, H=16)
    for p in [(0.0, 0.3, 0.2), (0.2, -0.25, -0.1), (-0.3, 0.1, 0.35)]:
        gs = single_gaussian(0.01, 0.9, p)
        a = gs.render(v).opacity[0, ..., 0]
        o, dirs = get_rays(v)
        to_p = torch.tensor(p) - o[0]
        dist = (to_p - (to_p * dirs[0]).sum(-1, keepdim=True) * dirs[0]).norm(dim=-1)
        assert divmod(int(a.argmax()), a.shape[1]) == divmod(int(dist.argmin()), a.shape[1])
        # and the projected mean is the ray's pixel coordinate (pixel centres at +0.5)
        vm, K = splat.viewmats_from_c2w(v.c2w), splat.intrinsics(v.fovy_deg, 16, 24)
        _, m2d, depth, _ = splat.project(gs.means[0], gs.quats[0], gs.scales[0], vm, K, 24, 16)
        ray = torch.tensor(p) - v.c2w[0, :3, 3]
        cam = v.c2w[0, :3, :3].T @ ray  # OpenGL camera coords: x right, y up, -z forward
        f = 0.5 * 16 / math.tan(math.radians(25.0))
        u, w = 12 + f * cam[0] / -cam[2], 8 - f * cam[1] / -cam[2]
        torch.testing.assert_close(m2d[0, 0], torch.stack([u, w]), atol=1e-4, rtol=0)
        assert float(depth[0, 0]) == pytest.approx(float(-cam[2]), abs=1e-5)


def test_projection_is_gsplats_pure_torch_reference():
    """``splat.project`` is gsplat's ``_fully_fused_projection`` on gsplat's covariances;
    check it against an independent EWA projection (J W Sigma W^T J^T + eps2d, conic = inverse)."""
    torch.manual_seed(1)
    gs = Gaussians(n_gaussians=50, init_radius=0.6)
    with torch.no_grad():
        gs.quats.normal_()
        gs.log_scales.uniform_(-4, -2)
    v = views(2, res=20)
    vm, K = splat.viewmats_from_c2w(v.c2w), splat.intrinsics(v.fovy_deg, 20, 20)
    radii, m2d, depths, conics = splat.project(gs.means[0], gs.quats[0], gs.scales[0], vm, K, 20, 20)
    q = torch.nn.functional.normalize(gs.quats[0].detach().double(), dim=-1)
    w, x, y, z = q.unbind(-1)
    R = torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                     2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                     2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1).view(-1, 3, 3)
    S = torch.diag_embed(gs.scales[0].detach().double())
    Sigma = R @ S @ S @ R.transpose(1, 2)
    for c in range(2):
        Wm, t, Kc = vm[c, :3, :3].double(), vm[c, :3, 3].double(), K[c].double()
        pc = gs.means[0].detach().double() @ Wm.T + t
        fx, cx, cy = Kc[0, 0], Kc[0, 2], Kc[1, 2]
        J = torch.zeros(50, 2, 3, dtype=torch.float64)
        J[:, 0, 0], J[:, 1, 1] = fx / pc[:, 2], fx / pc[:, 2]
        J[:, 0, 2], J[:, 1, 2] = -fx * pc[:, 0] / pc[:, 2] ** 2, -fx * pc[:, 1] / pc[:, 2] ** 2
        cov2 = J @ Wm @ Sigma @ Wm.T @ J.transpose(1, 2) + splat.EPS2D * torch.eye(2, dtype=torch.float64)
        inv = torch.linalg.inv(cov2)
        torch.testing.assert_close(m2d[c].double(), torch.stack([fx * pc[:, 0] / pc[:, 2] + cx,
                                                                 fx * pc[:, 1] / pc[:, 2] + cy], -1), atol=1e-4, rtol=0)
        torch.testing.assert_close(depths[c].double(), pc[:, 2], atol=1e-5, rtol=0)
        torch.testing.assert_close(conics[c].double(), torch.stack([inv[:, 0, 0], inv[:, 0, 1], inv[:, 1, 1]], -1),
                                   atol=1e-4, rtol=1e-4)
    assert (radii > 0).any()


def kernel_loop_reference(pix, means2d, conics, opacities, colors, depths):
    """A literal transcription of gsplat's RasterizeToPixels3DGSFwd loop, one pixel at a time."""
    order = torch.argsort(depths)
    out, alphas = [], []
    for p in pix.tolist():
        T, acc = 1.0, torch.zeros(colors.shape[1], dtype=torch.float64)
        for g in order.tolist():
            dx, dy = means2d[g, 0] - p[0], means2d[g, 1] - p[1]
            cx, cy, cz = conics[g].tolist()
            sigma = 0.5 * (cx * dx * dx + cz * dy * dy) + cy * dx * dy
            alpha = min(0.999, float(opacities[g]) * math.exp(-sigma))
            if sigma < 0 or alpha < 1 / 255:
                continue
            next_T = T * (1 - alpha)
            if next_T <= 1e-4:
                break
            acc += colors[g].double() * alpha * T
            T = next_T
        out.append(acc)
        alphas.append(1 - T)
    return torch.stack(out), torch.tensor(alphas, dtype=torch.float64)[:, None]


def test_compositing_matches_the_cuda_kernel_loop():
    """Dense opaque stack (so the 1/255 skip and the 1e-4 early stop both happen)."""
    torch.manual_seed(2)
    M = 60
    means2d = torch.rand(M, 2) * 8
    A = torch.randn(M, 2, 2) * 0.5
    cov = A @ A.transpose(1, 2) + 0.8 * torch.eye(2)
    inv = torch.linalg.inv(cov)
    conics = torch.stack([inv[:, 0, 0], inv[:, 0, 1], inv[:, 1, 1]], -1)
    opac = torch.rand(M) * 0.5 + 0.5
    opac[:5] = 0.9995  # clamped at 0.999
    colors, depths = torch.rand(M, 3), torch.rand(M)
    pix = torch.stack(torch.meshgrid(torch.arange(8), torch.arange(8), indexing="xy"), -1).reshape(-1, 2) + 0.5
    order = torch.argsort(depths)
    f, a = splat.composite_pixels(pix, means2d[order], conics[order], opac[order], colors[order])
    f_ref, a_ref = kernel_loop_reference(pix, means2d, conics, opac, colors, depths)
    torch.testing.assert_close(f.double(), f_ref, atol=2e-6, rtol=0)
    torch.testing.assert_close(a.double(), a_ref, atol=2e-6, rtol=0)
    assert float(a_ref.max()) > 0.999  # the early stop was exercised


def test_tiles_equal_one_big_tile():
    gs = Gaussians(n_gaussians=300)
    v = views(2, res=40)
    a = gs.render(v)
    gs.tile_size = 64  # one tile: every projected Gaussian against every pixel
    b = gs.render(v)
    torch.testing.assert_close(a.rgb, b.rgb, atol=1e-6, rtol=0)
    torch.testing.assert_close(a.opacity, b.opacity, atol=1e-6, rtol=0)


def test_gradients_reach_every_parameter():
    gs = Gaussians(n_gaussians=128, background={"kind": "learned", "color": [1.0, 1.0, 1.0]},
                   lambda_opacity=0.1, lambda_scales=0.1, lambda_position=0.1)
    with torch.no_grad():  # anisotropic, else the rotation has no effect (zero gradient)
        gs.log_scales.add_(torch.randn_like(gs.log_scales) * 0.3)
    out = gs.render(views(2, res=16))
    loss = (out.rgb * torch.rand_like(out.rgb)).sum() + sum(gs.regularizers(out, 0).values())
    loss.backward()
    names = {n for n, _ in gs.named_parameters()}
    assert names == {"means", "log_scales", "quats", "opacity_logits", "color_logits", "background.logit"}
    for n, p in gs.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
        assert float(p.grad.abs().sum()) > 0, n
    groups = {g["name"]: g["lr"] for g in gs.param_groups()}
    assert groups == {"means": 1e-3, "log_scales": 5e-3, "quats": 5e-3, "opacity_logits": 5e-2,
                      "color_logits": 1e-2, "background": 1e-3}


def test_export_writes_a_loadable_3dgs_ply(tmp_path):
    from src.export.gaussians import PLY_PROPERTIES, read_gaussians_ply

    gs = Gaussians(n_gaussians=100)
    paths = gs.export(tmp_path, views(4, res=16))
    assert {p.name for p in paths} == {"gaussians.ply", "turntable.mp4", "views.png", "turntable_frames.npz"}
    ply = read_gaussians_ply(tmp_path / "gaussians.ply")
    assert list(ply) == PLY_PROPERTIES
    np.testing.assert_allclose(np.stack([ply["x"], ply["y"], ply["z"]], 1), gs.means[0].detach().numpy())
    np.testing.assert_allclose(ply["opacity"], gs.opacity_logits[0].detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(0.5 + 0.28209479177387814 * ply["f_dc_0"], gs.colors[0, :, 0].detach().numpy(), atol=1e-6)
    import trimesh

    cloud = trimesh.load(tmp_path / "gaussians.ply")  # an independent PLY reader
    assert len(cloud.vertices) == 100
    np.testing.assert_allclose(np.asarray(cloud.vertices), gs.means[0].detach().numpy(), atol=1e-6)
    import imageio.v2 as imageio

    assert len(imageio.mimread(tmp_path / "turntable.mp4")) == 4


def test_train_20_steps_through_the_api(tmp_path, monkeypatch):
    from src.api import compose, train

    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path / "cache"))
    cfg = compose(["representation=gaussians", "backbone=shapes", "guidance=sds", "trainer.max_steps=20",
                   "representation.n_gaussians=1024", "backbone.shapes=[cone]", "backbone.colors=[red]",
                   "backbone.n_azimuths=4", "backbone.n_elevations=2", "prompt=a red cone",
                   "camera.n_eval_views=4", "trainer.checkpoint_every=20"])
    assert cfg.camera.height == 32  # camera follows the representation (conf/camera/gaussians.yaml)
    metrics, trainer = train(cfg, tmp_path / "run")
    run = tmp_path / "run"
    saved = json.loads((run / "metrics.json").read_text())
    assert saved and all(math.isfinite(v) for v in saved.values() if isinstance(v, float))
    assert (run / "export" / "gaussians.ply").exists() and (run / "export" / "turntable.mp4").exists()
    assert trainer.step == 20
