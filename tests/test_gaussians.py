"""representation=gaussians on the CPU: the pure-torch splatting path (src/representations/splat.py).

The CUDA comparison against gsplat's rasterizer is tests/test_gaussians_cuda.py (-m cuda).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import Tensor

from src import rng
from src.cameras_orbit import get_rays, make_views
from src.representations import splat
from src.representations.gaussians import SH_C0, Gaussians, expon_lr, inverse_sigmoid, sh_degree_at
from tests._nerf_fixtures import views


def one_view(res: int, azimuth=0.0, elevation=0.0, distance=2.0, fovy=40.0, H=None):
    full = lambda v: torch.tensor([float(v)])  # noqa: E731
    return make_views(full(azimuth), full(elevation), full(distance), full(fovy), H or res, res)


RGB = 0.8  # the colour of single_gaussian


def single_gaussian(scale: float, opacity: float, position=(0.0, 0.0, 0.0)) -> Gaussians:
    gs = Gaussians(n_gaussians=2, background={"kind": "constant", "color": [0.0, 0.0, 0.0]})
    p = gs.splats[0]
    with torch.no_grad():  # Gaussian 1 is moved far behind the camera (culled)
        p["means"].copy_(torch.tensor([position, (100.0, 0.0, 0.0)]))
        p["scales"].fill_(math.log(scale))
        p["quats"].copy_(torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0]]))
        p["opacities"].fill_(math.log(opacity / (1 - opacity)))
        p["sh0"].fill_((RGB - 0.5) / SH_C0)
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
        gs.splats[1]["means"] += torch.tensor([0.0, 0.0, 5.0])  # object 1 is out of view
    v = views(2, res=8)
    v.index = torch.tensor([0, 1])
    with torch.no_grad():
        out = gs.render(v)
    assert float(out.opacity[0].max()) > 0.5 and float(out.opacity[1].max()) < 1e-3
    assert gs._infos == {}  # a render without gradients leaves nothing for the strategy


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
    # rgb = 0.8 alpha + background (1 - alpha) (Background clamps black to 1e-3); depth = d
    bg = 1e-3
    torch.testing.assert_close(out.rgb[0, ..., 0], RGB * a + bg * (1 - a), atol=5e-6, rtol=0)
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
        sp = gs.splats[0]
        _, m2d, depth, _ = splat.project(sp["means"], sp["quats"], sp["scales"].exp(), vm, K, 24, 16)
        ray = torch.tensor(p) - v.c2w[0, :3, 3]
        cam = v.c2w[0, :3, :3].T @ ray  # OpenGL camera coords: x right, y up, -z forward
        f = 0.5 * 16 / math.tan(math.radians(25.0))
        u, w = 12 + f * cam[0] / -cam[2], 8 - f * cam[1] / -cam[2]
        torch.testing.assert_close(m2d[0, 0], torch.stack([u, w]), atol=1e-4, rtol=0)
        assert float(depth[0, 0]) == pytest.approx(float(-cam[2]), abs=1e-5)


def random_cloud(n: int, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """means, quats, scales (not log), opacities of n anisotropic, rotated Gaussians."""
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g) - 0.5) * 1.2
    quats = torch.randn(n, 4, generator=g)
    scales = torch.exp(torch.empty(n, 3).uniform_(-4, -2, generator=g))
    opacities = torch.empty(n).uniform_(0.001, 0.99, generator=g)
    return means, quats, scales, opacities


def test_projection_is_gsplats_pure_torch_reference():
    """``splat.project`` without opacities is gsplat's ``_fully_fused_projection`` on gsplat's
    covariances; check both against an independent EWA projection (J W Sigma W^T J^T + eps2d,
    conic = inverse)."""
    from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci

    means, quats, scales, _ = random_cloud(50, seed=1)
    quats = torch.nn.functional.normalize(quats, dim=-1)
    v = views(2, res=20)
    vm, K = splat.viewmats_from_c2w(v.c2w), splat.intrinsics(v.fovy_deg, 20, 20)
    radii, m2d, depths, conics = splat.project(means, quats, scales, vm, K, 20, 20)
    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_covar=True, compute_preci=False)
    ref = _fully_fused_projection(means, covars, vm, K, 20, 20, eps2d=splat.EPS2D)
    assert torch.equal(radii, ref[0])
    for ours, theirs in zip((m2d, depths, conics), ref[1:4]):
        torch.testing.assert_close(ours, theirs, atol=0, rtol=0)
    q = quats.double()
    w, x, y, z = q.unbind(-1)
    R = torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                     2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                     2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1).view(-1, 3, 3)
    S = torch.diag_embed(scales.double())
    Sigma = R @ S @ S @ R.transpose(1, 2)
    for c in range(2):
        Wm, t, Kc = vm[c, :3, :3].double(), vm[c, :3, 3].double(), K[c].double()
        pc = means.double() @ Wm.T + t
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


def test_opacity_aware_radii_are_the_cuda_kernels_and_change_no_pixel():
    """With opacities, ``project`` is what gsplat.rasterization computes on CUDA
    (ProjectionEWA3DGSFused.cu): culled below opacity 1/255, radius ceil(min(3.33,
    sqrt(2 ln(255 o))) sigma) -- where o exp(-r^2 / (2 sigma^2)) meets 1/255 -- and the image
    is the same as with 3.33 sigma boxes (only pairs with alpha < 1/255 are left out)."""
    means, quats, scales, opac = random_cloud(400, seed=3)
    opac[:20] = 0.002  # below 1/255: culled
    v = views(2, res=32)
    vm, K = splat.viewmats_from_c2w(v.c2w), splat.intrinsics(v.fovy_deg, 32, 32)
    loose, m2d, depths, conics = splat.project(means, quats, scales, vm, K, 32, 32)
    tight, *_ = splat.project(means, quats, scales, vm, K, 32, 32, opacities=opac)
    assert (tight[:, :20] == 0).all() and (loose[:, :20] > 0).any()
    det = 1.0 / (conics[..., 0] * conics[..., 2] - conics[..., 1] ** 2).double()
    sigma = torch.stack([conics[..., 2] * det, conics[..., 0] * det], -1).sqrt()  # sqrt diag of Sigma_2d
    e = torch.clamp(torch.sqrt(2 * torch.log(opac.double() * 255)), max=3.33)[None, :, None]
    on = (tight > 0).all(-1)
    expect = torch.ceil(e * sigma).int()
    # the float32 kernel and this float64 check can round differently at an exact integer
    assert float((tight[on] != expect[on]).float().mean()) < 0.01
    assert ((tight - expect)[on].abs() <= 1).all()
    assert (tight <= loose).all() and (tight[on] < loose[on]).any()
    feats = torch.rand(2, 400, 3)
    a_loose = splat.rasterize_reference(m2d, conics, depths, loose, opac, feats, 32, 32)
    a_tight = splat.rasterize_reference(m2d, conics, depths, tight, opac, feats, 32, 32)
    for x, y in zip(a_loose, a_tight):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=0)


def test_sh_colours_are_gsplats_rule():
    """Degree 0: rgb = 0.5 + C0 sh0 from every side; degree 1 adds C1 (-y, z, -x) . coeffs of
    the unit direction camera -> Gaussian (3DGS/gsplat band order), clamped at 0."""
    C1 = 0.4886025119029199
    g = torch.Generator().manual_seed(4)
    means = torch.randn(30, 3, generator=g) * 0.3
    coeffs = torch.randn(30, 4, 3, generator=g) * 0.5
    v = views(3, res=8)
    vm = splat.viewmats_from_c2w(v.c2w)
    rgb0 = splat.sh_colors(0, means, coeffs, vm)
    torch.testing.assert_close(rgb0, (0.5 + SH_C0 * coeffs[None, :, 0]).clamp_min(0).expand(3, -1, -1))
    d = torch.nn.functional.normalize(means[None] - v.c2w[:, None, :3, 3], dim=-1)
    x, y, z = d.unbind(-1)
    band1 = (-C1 * y)[..., None] * coeffs[None, :, 1] + (C1 * z)[..., None] * coeffs[None, :, 2] \
        + (-C1 * x)[..., None] * coeffs[None, :, 3]
    expect = (0.5 + SH_C0 * coeffs[None, :, 0] + band1).clamp_min(0)
    torch.testing.assert_close(splat.sh_colors(1, means, coeffs, vm), expect, atol=1e-6, rtol=0)


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
                   lambda_opacity=0.1, lambda_scales=0.1, lambda_position=0.1, sh_degree=1)
    gs.update_step(1000)  # SH degree 1 from step 1000 (3DGS's schedule): shN is used
    assert gs.active_sh_degree == 1
    with torch.no_grad():  # anisotropic, else the rotation has no effect (zero gradient)
        gs.splats[0]["scales"].add_(torch.randn_like(gs.splats[0]["scales"]) * 0.3)
    out = gs.render(views(2, res=16))
    loss = (out.rgb * torch.rand_like(out.rgb)).sum() + sum(gs.regularizers(out, 0).values())
    loss.backward()
    names = {n for n, _ in gs.named_parameters()}
    assert names == {f"splats.0.{n}" for n in ("means", "scales", "quats", "opacities", "sh0", "shN")} | \
        {"background.logit"}
    for n, p in gs.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
        assert float(p.grad.abs().sum()) > 0, n
    groups = {g["name"]: (g["lr"], g.get("eps")) for g in gs.param_groups()}
    assert groups == {"means": (1e-3, 1e-15), "scales": (5e-3, 1e-15), "quats": (5e-3, 1e-15),
                      "opacities": (5e-2, 1e-15), "sh0": (1e-2, 1e-15), "shN": (5e-4, 1e-15),
                      "background": (1e-3, None)}


def test_position_lr_decay_and_sh_schedule_values():
    """threestudio-3dgs: position lr 1e-3 -> 2e-5 log-linearly over 1000 steps (3DGS
    get_expon_lr_func), then constant; 3DGS: one SH band more every 1000 steps."""
    assert expon_lr(0, 1e-3, 2e-5, 1000) == pytest.approx(1e-3, rel=1e-12)
    assert expon_lr(500, 1e-3, 2e-5, 1000) == pytest.approx(math.sqrt(1e-3 * 2e-5), rel=1e-12)
    assert expon_lr(250, 1e-3, 2e-5, 1000) == pytest.approx(1e-3 * 0.02**0.25, rel=1e-12)
    assert expon_lr(1000, 1e-3, 2e-5, 1000) == pytest.approx(2e-5, rel=1e-12)
    assert expon_lr(5000, 1e-3, 2e-5, 1000) == pytest.approx(2e-5, rel=1e-12)
    assert [sh_degree_at(s, 3, 1000) for s in (0, 999, 1000, 1999, 2000, 2999, 3000, 10**6)] == \
        [0, 0, 1, 1, 2, 2, 3, 3]
    assert [sh_degree_at(s, 1, 250) for s in (0, 249, 250, 1000)] == [0, 0, 1, 1]
    gs = Gaussians(n_gaussians=8)
    assert gs.lr_scale("means", 500) == pytest.approx(math.sqrt(2e-5 / 1e-3), rel=1e-12)
    assert gs.lr_scale("scales", 500) == 1.0 and gs.lr_scale("background", 500) == 1.0
    assert Gaussians(n_gaussians=8, lr_final=None).lr_scale("means", 500) == 1.0


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_trainer_applies_the_per_group_lr_schedule(tmp_path):
    """The trainer's LambdaLR is warm-up x Representation.lr_scale per group."""
    from src.api import compose
    from src.trainer import Trainer

    cfg = compose(["representation=gaussians", "representation.n_gaussians=16", "trainer.warmup_steps=10",
                   "backbone.shapes=[cone]", "backbone.colors=[red]", "backbone.n_azimuths=4",
                   "backbone.n_elevations=2"])
    tr = Trainer(cfg, tmp_path)
    lrs = lambda: {g["name"]: g["lr"] for g in tr.optimizer.param_groups}  # noqa: E731
    assert lrs()["means"] == pytest.approx(1e-3 * 0.1) and lrs()["scales"] == pytest.approx(5e-3 * 0.1)
    for _ in range(500):
        tr.lr_schedule.step()
    assert lrs()["means"] == pytest.approx(math.sqrt(1e-3 * 2e-5)) and lrs()["scales"] == pytest.approx(5e-3)
    for _ in range(600):
        tr.lr_schedule.step()
    assert lrs()["means"] == pytest.approx(2e-5) and lrs()["sh0"] == pytest.approx(1e-2)


def test_sh_degree_raises_view_dependence_on_schedule():
    """shN is ignored at degree 0 and used from step sh_degree_interval on."""
    gs = Gaussians(n_gaussians=64, sh_degree=2, sh_degree_interval=100)
    with torch.no_grad():
        gs.splats[0]["shN"].normal_(0, 0.3)
    v = views(2, res=16)
    flat = Gaussians(n_gaussians=64, sh_degree=0)
    with torch.no_grad():
        flat.load_state_dict({k: v for k, v in gs.state_dict().items() if "shN" not in k}, strict=False)
        gs.update_step(99)
        torch.testing.assert_close(gs.render(v).rgb, flat.render(v).rgb, atol=0, rtol=0)
        gs.update_step(100)
        assert gs.active_sh_degree == 1 and gs.sh_coeffs(0).shape == (64, 4, 3)
        assert float((gs.render(v).rgb - flat.render(v).rgb).abs().max()) > 0.05
        gs.update_step(200)
        assert gs.active_sh_degree == 2 and gs.sh_coeffs(0).shape == (64, 9, 3)


# --- densification (gsplat.strategy.DefaultStrategy) ------------------------------------------
DENSIFY = dict(refine_start_iter=0, refine_every=10, refine_stop_iter=1000, reset_every=10**6,
               grow_grad2d=0.1, grow_scale3d=0.05, prune_opa=0.05)


def constructed(**kw) -> tuple[Gaussians, torch.optim.Optimizer, dict]:
    """Four Gaussians, one Adam step taken: 0 small + high gradient (clone), 1 large + high
    gradient (split), 2 small + low gradient (kept), 3 opacity 0.01 < prune_opa (pruned)."""
    gs = Gaussians(n_gaussians=4, densify={**DENSIFY, **kw}, scene_scale=1.0)
    p = gs.splats[0]
    with torch.no_grad():
        p["means"].copy_(torch.tensor([[0.0, 0, 0], [0.3, 0, 0], [0, 0.3, 0], [0, 0, 0.3]]))
        p["scales"].copy_(torch.tensor([0.01, 0.2, 0.01, 0.01]).log()[:, None].repeat(1, 3))
        p["opacities"].copy_(inverse_sigmoid(torch.tensor([0.5, 0.6, 0.7, 0.01])))
    opt = torch.optim.Adam(gs.param_groups())
    sum((q * torch.linspace(1, 2, q.numel()).view_as(q)).sum() for q in gs.parameters()).backward()
    opt.step()
    # the view-space gradient the strategy reads: |g| W/2 n_cameras = 0.2, 0.2, 0.05, 0.05
    W, H = 20, 10
    m2d = torch.zeros(1, 4, 2)
    m2d.grad = torch.tensor([[[0.2, 0.0], [0.0, 0.2 * W / H], [0.05, 0.0], [0.0, 0.05 * W / H]]]) / (W / 2)
    info = {"means2d": m2d, "radii": torch.ones(1, 4, 2, dtype=torch.int32), "width": W, "height": H,
            "n_cameras": 1, "gaussian_ids": None}
    return gs, opt, info


def test_densify_decisions_follow_gsplats_rule():
    gs, opt, info = constructed()
    p0 = {k: v.detach().clone() for k, v in gs.splats[0].items()}
    m0 = {k: opt.state[v]["exp_avg"].clone() for k, v in gs.splats[0].items()}
    gs._infos = {0: info}
    rng.seed_global(0, rng.Stream.GLOBAL, 10)  # the split's noise: torch's global RNG, per step
    gs.after_optimizer_step(10, opt)
    p = gs.splats[0]
    # clone appends a copy of 0; split replaces 1 by two children at the end; 3 is pruned:
    # [0, 2, 0', 1a, 1b]
    assert gs.counts() == [5]
    torch.testing.assert_close(p["means"][:3], p0["means"][[0, 2, 0]], atol=0, rtol=0)
    torch.testing.assert_close(p["scales"][:3], p0["scales"][[0, 2, 0]], atol=0, rtol=0)
    torch.testing.assert_close(p["scales"][3:], (p0["scales"][[1, 1]].exp() / 1.6).log())  # gsplat: / 1.6
    torch.testing.assert_close(p["opacities"][3:], p0["opacities"][[1, 1]], atol=0, rtol=0)
    d = (p["means"][3:] - p0["means"][1]).norm(dim=-1)  # children ~ N(mean, Sigma)
    assert (d > 0).all() and (d < 5 * 0.2 * math.sqrt(3)).all()
    # the optimizer now holds the new tensors, with the kept Gaussians' moments and zeros for new ones
    for name, q in p.items():
        (group,) = [g for g in opt.param_groups if g["params"][0] is q]
        assert group["name"] == name and opt.state[q]["exp_avg"].shape == q.shape
        torch.testing.assert_close(opt.state[q]["exp_avg"][:2], m0[name][[0, 2]], atol=0, rtol=0)
        assert (opt.state[q]["exp_avg"][2:] == 0).all()
    st = gs.strategy_states[0]
    assert st["grad2d"].shape == (5,) and float(st["grad2d"].abs().sum()) == 0.0  # reset after refining
    # a step later the set trains on: the optimizer steps the new tensors
    sum(q.sum() for q in gs.parameters()).backward()
    opt.step()


def test_gradient_threshold_and_refine_interval():
    """Only mean gradients above grow_grad2d grow; nothing changes off the refine steps."""
    gs, opt, info = constructed(grow_grad2d=0.3)  # above every gradient: nothing grows
    gs._infos = {0: info}
    gs.after_optimizer_step(10, opt)
    assert gs.counts() == [3]  # only the prune of Gaussian 3
    gs, opt, info = constructed()
    gs._infos = {0: info}
    gs.after_optimizer_step(9, opt)  # not a refine step: statistics only
    assert gs.counts() == [4]
    st = gs.strategy_states[0]
    torch.testing.assert_close(st["grad2d"], torch.tensor([0.2, 0.2, 0.05, 0.05]))
    assert st["count"].tolist() == [1.0, 1.0, 1.0, 1.0]


def test_opacity_reset_value_and_moments():
    """Every reset_every steps (in the refine window) opacities are clamped at 2 prune_opa
    (gsplat's reset_opa, 3DGS: 0.01) and their Adam moments zeroed; the rest is untouched."""
    gs, opt, info = constructed(reset_every=20, refine_every=1000)
    before = torch.sigmoid(gs.splats[0]["opacities"]).detach().clone()
    gs._infos = {0: info}
    gs.after_optimizer_step(19, opt)
    assert torch.equal(torch.sigmoid(gs.splats[0]["opacities"]).detach(), before)
    gs._infos = {0: info}
    gs.after_optimizer_step(20, opt)
    after = torch.sigmoid(gs.splats[0]["opacities"]).detach()
    assert float(before[:3].min()) > 0.1 and float(before[3]) < 0.1
    torch.testing.assert_close(after, torch.tensor([0.1, 0.1, 0.1, float(before[3])]), rtol=1e-6, atol=0)
    q = gs.splats[0]["opacities"]
    assert (opt.state[q]["exp_avg"] == 0).all() and (opt.state[q]["exp_avg_sq"] == 0).all()
    assert (opt.state[gs.splats[0]["means"]]["exp_avg"] != 0).any()


def test_objects_densify_independently_and_checkpoint_round_trip():
    """K = 2: only object 0 is seen, only object 0 grows; the state dict (parameters of
    other counts + the strategy's statistics) loads into a fresh instance and its optimizer."""
    kw = dict(n_objects=2, n_gaussians=64, densify={**DENSIFY, "refine_every": 3, "grow_grad2d": 1e-4},
              sh_degree=1, sh_degree_interval=2)
    gs = Gaussians(**kw)
    opt = torch.optim.Adam(gs.param_groups())
    v = views(2, res=16)  # both views of object 0
    for step in range(4):
        gs.update_step(step)
        out = gs.render(v)
        assert gs._infos[0]["n_cameras"] == 2 and 1 not in gs._infos
        opt.zero_grad(set_to_none=True)
        (out.rgb * torch.linspace(0, 1, out.rgb.numel()).view_as(out.rgb)).sum().backward()
        opt.step()
        gs.after_optimizer_step(step, opt)
    n0, n1 = gs.counts()
    assert n0 > 64 and n1 == 64 and gs.metrics() == {"n_gaussians": n0 + 64, "n_gaussians_0": n0,
                                                        "n_gaussians_1": 64}
    v.index = torch.tensor([0, 1])
    out = gs.render(v)  # each object renders its own view
    assert out.rgb.shape == (2, 16, 16, 3) and gs._infos[0]["n_cameras"] == gs._infos[1]["n_cameras"] == 2
    fresh = Gaussians(**kw)
    opt2 = torch.optim.Adam(fresh.param_groups())
    fresh.load_state_dict(gs.state_dict())
    opt2.load_state_dict(opt.state_dict())
    assert fresh.counts() == [n0, 64] and fresh.active_sh_degree == 1
    for (n, a), b in zip(gs.state_dict().items(), fresh.state_dict().values()):
        if n != "_extra_state":
            assert torch.equal(a, b), n
    assert torch.equal(fresh.strategy_states[0]["grad2d"], gs.strategy_states[0]["grad2d"])
    for g in opt2.param_groups[:6]:  # object 0's: the optimizer holds the resized tensors themselves
        assert any(g["params"][0] is q for q in fresh.parameters())
        assert opt2.state[g["params"][0]]["exp_avg"].shape == g["params"][0].shape


def test_config_checks_refuse_bad_densify_settings():
    from src.api import compose
    from src.trainer import ConfigError, validate

    with pytest.raises(ConfigError, match=r"representation.densify=\['grow_grad'\] is invalid: gsplat DefaultStrategy takes"):
        validate(compose(["representation=gaussians", "+representation.densify.grow_grad=0.1"]))
    with pytest.raises(ConfigError, match=r"densification needs trainer.dtype=float32"):
        validate(compose(["representation=gaussians", "trainer.dtype=float64"]))
    validate(compose(["representation=gaussians", "trainer.dtype=float64", "representation.densify=null"]))
    with pytest.raises(ConfigError, match=r"representation.init_ply='/no/such.ply' is invalid"):
        validate(compose(["representation=gaussians", "representation.init_ply=/no/such.ply"]))


def test_export_ply_round_trip_count_and_degree(tmp_path):
    """After densification and an SH raise: gaussians.ply holds every Gaussian, 3DGS's
    property list for the degree reached (f_rest_0..8 at degree 1), the parameters
    pre-activation; init_ply reads it back as the same points and DC colours."""
    import trimesh

    from src.export.gaussians import ply_properties, read_gaussians_ply

    gs, opt, info = constructed()
    gs._infos = {0: info}
    gs.after_optimizer_step(10, opt)
    gs = Gaussians(n_gaussians=100, sh_degree=2, sh_degree_interval=10)
    with torch.no_grad():
        gs.splats[0]["shN"].normal_()
        gs.splats[0]["sh0"].uniform_(-1, 1)
    gs.update_step(15)  # degree 1 reached (of 2)
    paths = gs.export(tmp_path, views(4, res=16))
    assert {p.name for p in paths} == {"gaussians.ply", "turntable.mp4", "views.png", "turntable_frames.npz"}
    ply = read_gaussians_ply(tmp_path / "gaussians.ply")
    assert list(ply) == ply_properties(1) and sum(k.startswith("f_rest_") for k in ply) == 9
    p = {k: v.detach().numpy() for k, v in gs.splats[0].items()}
    np.testing.assert_allclose(np.stack([ply["x"], ply["y"], ply["z"]], 1), p["means"])
    np.testing.assert_allclose(ply["opacity"], p["opacities"], rtol=1e-6)
    np.testing.assert_allclose(np.stack([ply[f"scale_{i}"] for i in range(3)], 1), p["scales"])
    np.testing.assert_allclose(np.stack([ply[f"f_dc_{i}"] for i in range(3)], 1), p["sh0"][:, 0])
    # channel-major f_rest (3DGS): f_rest_{3 c + j} = band j of channel c, degree 1 = 3 bands
    np.testing.assert_allclose(ply["f_rest_4"], p["shN"][:, 1, 1])
    np.testing.assert_allclose(ply["f_rest_6"], p["shN"][:, 0, 2])
    assert len(trimesh.load(tmp_path / "gaussians.ply").vertices) == 100  # an independent reader
    back = Gaussians(init_ply=str(tmp_path / "gaussians.ply"))
    assert back.counts() == [100]
    np.testing.assert_allclose(back.splats[0]["means"].detach().numpy(), p["means"])
    torch.testing.assert_close(back.rgb(0), gs.rgb(0), atol=1e-6, rtol=0)
    import imageio.v2 as imageio

    assert len(imageio.mimread(tmp_path / "turntable.mp4")) == 4


def test_init_from_a_coloured_point_cloud(tmp_path):
    """GaussianDreamer's input: x y z + uchar red green blue (Shap-E points via plyfile)."""
    import trimesh

    pts = np.random.default_rng(0).uniform(-0.5, 0.5, (50, 3))
    cols = np.zeros((50, 4), np.uint8)
    cols[:, 0], cols[:, 3] = 255, 255
    trimesh.PointCloud(pts, colors=cols).export(tmp_path / "pc.ply")
    gs = Gaussians(init_ply=str(tmp_path / "pc.ply"), n_gaussians=7)
    assert gs.counts() == [50] and gs.n_gaussians == 50
    torch.testing.assert_close(gs.rgb(0), torch.tensor([1.0, 0.0, 0.0]).expand(50, 3), atol=1e-6, rtol=0)
    torch.testing.assert_close(gs.splats[0]["scales"].exp()[:, 0], splat.knn_scale(gs.splats[0]["means"].detach()))


def test_train_20_steps_through_the_api(tmp_path, monkeypatch):
    from src.api import compose, train

    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path / "cache"))
    # a 4-frame video: only its file is checked here (the 60-frame default: tests/test_export.py)
    cfg = compose(["representation=gaussians", "backbone=shapes", "guidance=sds", "trainer.max_steps=20",
                   "+representation.export.n_frames=4", "representation.n_gaussians=1024", "backbone.shapes=[cone]", "backbone.colors=[red]",
                   "backbone.n_azimuths=4", "backbone.n_elevations=2", "prompt=a red cone",
                   "camera.n_eval_views=4", "trainer.checkpoint_every=20", "trainer.log_every=5",
                   "representation.densify.refine_every=10", "representation.densify.grow_grad2d=0.05",
                   "representation.densify.refine_start_iter=0"])
    assert cfg.camera.height == 32  # camera follows the representation (conf/camera/gaussians.yaml)
    metrics, trainer = train(cfg, tmp_path / "run")
    run = tmp_path / "run"
    saved = json.loads((run / "metrics.json").read_text())
    assert saved and all(math.isfinite(v) for v in saved.values() if isinstance(v, float))
    n = trainer.c.representation.counts()[0]
    assert saved["n_gaussians"] == n != 1024  # densified at step 10
    from src.export.gaussians import read_gaussians_ply

    assert len(read_gaussians_ply(run / "export" / "gaussians.ply")["x"]) == n
    assert (run / "export" / "turntable.mp4").exists()
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert logged[0]["n_gaussians"] == 1024 and logged[-2]["n_gaussians"] == n  # steps 5 and 20
    assert trainer.step == 20
    # re-export from the checkpoint (python -m src.reexport): the densified set and the degree
    from omegaconf import OmegaConf

    from src.reexport import reexport

    (run / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    reexport(run, out_dir=tmp_path / "again", n_frames=2)
    again = read_gaussians_ply(tmp_path / "again" / "gaussians.ply")
    first = read_gaussians_ply(run / "export" / "gaussians.ply")
    assert list(again) == list(first) and all(np.array_equal(again[k], first[k]) for k in first)


def test_killed_run_resumes_bit_identical_across_densification(tmp_path, monkeypatch):
    """Refines at steps 5, 10, 15, 20, 25 change the count (one before the checkpoint at 10,
    the rest after); a run killed at step 17 and resumed from 10 ends with the same
    Gaussians, strategy statistics and optimizer state as an uninterrupted one."""
    from src.api import compose, train
    from src.trainer import CHECKPOINT, Trainer

    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path / "cache"))
    cfg = compose(["representation=gaussians", "representation.n_gaussians=256", "trainer.max_steps=30",
                   "trainer.checkpoint_every=10", "trainer.export=false", "backbone.shapes=[cone]",
                   "backbone.colors=[red]", "backbone.n_azimuths=4", "backbone.n_elevations=2",
                   "camera.n_eval_views=2", "representation.densify.refine_every=5",
                   "representation.densify.grow_grad2d=0.05", "representation.sh_degree=1",
                   "representation.sh_degree_interval=12", "representation.densify.refine_start_iter=0"])
    _, ref = train(cfg, tmp_path / "ref")
    original = Trainer.train_step
    counts = []

    def crashing(self, step):
        if step == 17:
            raise KeyboardInterrupt("killed")
        out = original(self, step)
        counts.append(self.c.representation.counts()[0])
        return out

    monkeypatch.setattr(Trainer, "train_step", crashing)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "run")
    ckpt = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=False)
    assert ckpt["step"] == 10 and ckpt["representation"]["splats.0.means"].shape[0] == counts[9] != 256
    assert counts[10] != counts[9]  # the refine at step 10 came after the checkpoint
    monkeypatch.setattr(Trainer, "train_step", original)
    _, res = train(cfg, tmp_path / "run")
    a, b = ref.c.representation, res.c.representation
    assert a.counts() == b.counts() and a.counts()[0] != counts[9] and a.active_sh_degree == 1
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        if name != "_extra_state":
            assert torch.equal(x, y), name
    for key in ("grad2d", "count"):
        assert torch.equal(a.strategy_states[0][key], b.strategy_states[0][key]), key
    sa, sb = ref.optimizer.state_dict(), res.optimizer.state_dict()
    for i, st in sa["state"].items():
        for key, x in st.items():
            assert torch.equal(x, sb["state"][i][key]), (i, key)
    assert [g["lr"] for g in sa["param_groups"]] == [g["lr"] for g in sb["param_groups"]]
