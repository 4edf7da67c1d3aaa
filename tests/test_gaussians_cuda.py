"""gsplat's CUDA rasterizer vs the pure-torch reference (src/representations/splat.py), and
gsplat's densification strategy fed by each (the same decisions from the same Gaussians).

Run on the device machine: ``pytest -m cuda -s tests/test_gaussians_cuda.py``; the numbers
printed are quoted in the issue note.

Tolerances. Both paths evaluate the same formula (splat.py's docstring) in float32; they
differ by round-off (gsplat's ``__expf``, its per-pixel sequential product vs
``torch.cumprod``, the order of the 2x2 inverse) and by the rule's two discontinuities:
a pixel-Gaussian pair whose alpha sits at 1/255 can be kept by one and skipped by the
other (a jump of <= alpha T |c - c_behind| < 1/255 = 3.9e-3 in that pixel), and the stop
at transmittance 1e-4 can fall one Gaussian apart (<= 1e-4). So: max |diff| <= 5e-3
(one such flip, with margin) and mean |diff| <= 1e-5 (flips are rare; round-off ~1e-7).
Gradients (autograd of the torch reference vs gsplat's hand-written backward): a flip
changes the gradient of the few Gaussians involved, so compare the whole gradient:
relative L2 error ||g_cuda - g_torch|| / ||g_torch|| <= 1e-2 for means and colors.

Measured on an H100 (torch 2.11, CUDA 13, gsplat 1.5.3 compiled there in 74 s), 3 views:
- N = 2000, 64 px (mean alpha 0.68): rgb max 1.3e-6 / mean 8.4e-8, alpha max 1.1e-6;
  no pixel off by > 1e-4; gradient rel. L2 error means 8.8e-5, colors 1.0e-4,
  opacities 1.0e-4, scales 8.4e-5, quats 6.5e-5 (cosine 1.000000).
- N = 20000, 128 px (mean alpha 0.81): rgb max 9.5e-7 / mean 9.3e-8; gradients 1.2e-4 to
  1.4e-4 rel. error.
- ``Gaussians.render`` (4096 init Gaussians, 64 px, 4 views, learned background): rgb max
  7.2e-7, depth max 1.3e-6.
No threshold flip occurred in these scenes, so the measured error is round-off alone.
"""

from __future__ import annotations

import math
import time

import pytest
import torch

from src.representations import splat
from src.representations.gaussians import Gaussians
from tests._nerf_fixtures import views

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def random_cloud(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Anisotropic, rotated, partly transparent Gaussians in a ball of radius 0.6."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, 3, generator=g)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    return {
        "means": d * 0.6 * u[:, :1].pow(1 / 3),
        "quats": torch.randn(n, 4, generator=g),
        "scales": torch.exp(torch.empty(n, 3).uniform_(-4.5, -2.5, generator=g)),
        "opacities": torch.empty(n).uniform_(0.05, 0.99, generator=g),
        "colors": torch.rand(n, 3, generator=g),
    }


def cameras(res: int, n: int = 3):
    v = views(n, res=res, distance=2.0, fovy=40.0, elevation=20.0)
    return splat.viewmats_from_c2w(v.c2w), splat.intrinsics(v.fovy_deg, res, res)


def run(fn, cloud: dict, viewmats, Ks, res: int, weights: tuple, device: str, sh_degree=None):
    """Render, then a fixed random linear loss of rgb and alpha; returns outputs and grads."""
    p = {k: v.to(device).clone().requires_grad_(True) for k, v in cloud.items()}
    rgb, alpha, _, _ = fn(p["means"], p["quats"], p["scales"], p["opacities"], p["colors"],
                          viewmats.to(device), Ks.to(device), res, res, sh_degree=sh_degree)
    loss = (rgb * weights[0].to(device)).sum() + (alpha * weights[1].to(device)).sum()
    loss.backward()
    return rgb.detach().cpu(), alpha.detach().cpu(), {k: v.grad.cpu() for k, v in p.items()}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.mark.parametrize("n, res, sh_degree", [(2000, 64, None), (20000, 128, None), (2000, 64, 2)])
def test_gsplat_cuda_matches_torch_reference(n, res, sh_degree):
    """sh_degree None: post-activation colours; 2: colours from SH coefficients (the torch
    path's gsplat ``_spherical_harmonics`` vs gsplat's CUDA kernel)."""
    cloud = random_cloud(n)
    if sh_degree is not None:
        g = torch.Generator().manual_seed(5)
        cloud["colors"] = torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g) * 0.3
    viewmats, Ks = cameras(res)
    g = torch.Generator().manual_seed(1)
    weights = (torch.randn(3, res, res, 3, generator=g), torch.randn(3, res, res, 1, generator=g))
    rgb_t, a_t, g_t = run(splat.rasterize_torch, cloud, viewmats, Ks, res, weights, "cpu", sh_degree)
    rgb_c, a_c, g_c = run(splat.rasterize_gsplat, cloud, viewmats, Ks, res, weights, "cuda", sh_degree)
    d_rgb, d_a = (rgb_c - rgb_t).abs(), (a_c - a_t).abs()
    n_px = int((d_rgb.amax(-1) > 1e-4).sum())
    print(f"\n[N={n}, {res}px, 3 views, sh_degree {sh_degree}] coverage mean alpha {float(a_t.mean()):.3f}; "
          f"rgb |cuda - torch| max {float(d_rgb.max()):.2e} mean {float(d_rgb.mean()):.2e}; "
          f"alpha max {float(d_a.max()):.2e} mean {float(d_a.mean()):.2e}; "
          f"pixels off by > 1e-4: {n_px} / {3 * res * res}")
    for k in ("means", "colors", "opacities", "scales", "quats"):
        cos = float(torch.nn.functional.cosine_similarity(g_c[k].flatten(), g_t[k].flatten(), dim=0))
        print(f"  grad {k:9s}: rel L2 err {rel(g_c[k], g_t[k]):.2e}, cosine {cos:.6f}, "
              f"|g| torch {float(g_t[k].norm()):.3e} cuda {float(g_c[k].norm()):.3e}")
    assert float(d_rgb.max()) <= 5e-3 and float(d_a.max()) <= 5e-3
    assert float(d_rgb.mean()) <= 1e-5 and float(d_a.mean()) <= 1e-5
    assert rel(g_c["means"], g_t["means"]) <= 1e-2
    assert rel(g_c["colors"], g_t["colors"]) <= 1e-2


def test_representation_renders_the_same_on_cuda_and_cpu():
    """``Gaussians.render``: renderer=auto picks gsplat on CUDA, the torch path on the CPU."""
    torch.manual_seed(0)
    gs = Gaussians(n_gaussians=4096, background={"kind": "learned", "color": [1.0, 1.0, 1.0]})
    gs.splats[0]["sh0"].data.uniform_(-1, 1)  # coloured, not the gray init
    v = views(4, res=64, distance=2.0, fovy=40.0, elevation=15.0)
    with torch.no_grad():
        cpu = gs.render(v)
        gpu = gs.cuda().render(v)
    d = (gpu.rgb.cpu() - cpu.rgb).abs()
    dd = (gpu.depth.cpu() - cpu.depth).abs()[cpu.opacity > 0.5]
    print(f"\n[render() 4096 init Gaussians, 64 px x 4] rgb max {float(d.max()):.2e} mean {float(d.mean()):.2e}; "
          f"depth (alpha > 0.5) max {float(dd.max()):.2e}")
    assert float(d.max()) <= 5e-3 and float(d.mean()) <= 1e-5
    assert float(dd.max()) <= 1e-3


def test_gsplat_throughput_printout():
    """Forward + backward of gsplat at a few sizes (printed for the note, not asserted)."""
    for n in (4096, 100_000):
        cloud = random_cloud(n)
        for res in (64, 256, 512):
            viewmats, Ks = cameras(res, n=1)
            p = {k: v.cuda().requires_grad_(True) for k, v in cloud.items()}
            vm, K = viewmats.cuda(), Ks.cuda()

            def step(p=p, vm=vm, K=K, res=res):
                rgb, alpha, _, _ = splat.rasterize_gsplat(p["means"], p["quats"], p["scales"], p["opacities"],
                                                       p["colors"], vm, K, res, res)
                (rgb.sum() + alpha.sum()).backward()

            for _ in range(3):
                step()
            torch.cuda.synchronize()
            t = time.perf_counter()
            reps = 20
            for _ in range(reps):
                step()
            torch.cuda.synchronize()
            ms = (time.perf_counter() - t) / reps * 1e3
            print(f"gsplat fwd+bwd N={n:6d} {res:3d}px: {ms:.2f} ms")
    assert math.isfinite(ms)


def cloud_gaussians(n: int, renderer: str) -> Gaussians:
    """A Gaussians whose object 0 is random_cloud(n) (opacities 0.05-0.99, some below 1/255,
    some off-screen), densifying with gsplat's DefaultStrategy."""
    c = random_cloud(n)
    c["opacities"][: n // 50] = 0.002  # culled by both (opacity < 1/255)
    c["means"][n // 50 : n // 25] += torch.tensor([3.0, 0.0, 0.0])  # off-screen in most views
    gs = Gaussians(n_gaussians=n, renderer=renderer, background={"kind": "constant", "color": [1.0, 1.0, 1.0]},
                   densify=dict(refine_start_iter=0, refine_every=100, refine_stop_iter=10**6,
                                reset_every=10**7, grow_grad2d=0.0, grow_scale3d=0.04, prune_opa=0.1))
    p = gs.splats[0]
    with torch.no_grad():
        p["means"].copy_(c["means"])
        p["quats"].copy_(c["quats"])
        p["scales"].copy_(c["scales"].log())
        p["opacities"].copy_(torch.logit(c["opacities"]))
        p["sh0"].copy_(((c["colors"] - 0.5) / 0.28209479177387814)[:, None])
    return gs


def densify_once(gs: Gaussians, v, weights: tuple, threshold: float, device: str) -> dict:
    """One render + fixed linear loss + backward, then the strategy's refine step; returns
    what it decided from (radii, view-space gradients, mean gradient) and the result."""
    gs = gs.to(device)
    v = v.to(device)
    gs.strategy.grow_grad2d = threshold
    opt = torch.optim.Adam(gs.param_groups())  # no step: both paths keep identical parameters
    gs.update_step(100)
    out = gs.render(v)
    loss = (out.rgb * weights[0].to(device)).sum() + (out.opacity * weights[1].to(device)).sum()
    loss.backward()
    info = gs._infos[0]
    radii, grad = info["radii"].detach().cpu(), info["means2d"].grad.detach().cpu().float()
    scales_max = gs.splats[0]["scales"].detach().exp().amax(-1).cpu()
    opac = torch.sigmoid(gs.splats[0]["opacities"].detach()).cpu()
    gs.after_optimizer_step(100, opt)
    return {"radii": radii, "grad": grad, "count_after": gs.counts()[0], "scales_max": scales_max,
            "opac": opac, "means": gs.splats[0]["means"].detach().cpu()}


def test_densification_decisions_match_on_cuda_and_cpu():
    """The same Gaussians, cameras and loss give gsplat's DefaultStrategy the same ``info``
    from the pure-torch CPU path as from gsplat's CUDA rasterizer -- the same seen sets
    (radii > 0, gsplat's opacity-aware radii on both), the same view-space gradients up to
    round-off -- and so the same clone / split / prune decisions and the same count.

    Tolerance: a Gaussian whose mean gradient lies within 1% of the threshold may fall on
    either side (the gradients differ by round-off, ~1e-4 relative; 1e-2 is the bound the
    rasterizer comparison above allows), as may one seen in different views (radii agree
    but for rare one-pixel round-off at integer boundaries, <= 1% of pairs); every other
    decision must agree, and the counts may differ by at most 2 per borderline Gaussian."""
    n, res = 3000, 64
    v = views(3, res=res, distance=2.0, fovy=40.0, elevation=20.0)
    g = torch.Generator().manual_seed(2)
    weights = (torch.randn(3, res, res, 3, generator=g), torch.randn(3, res, res, 1, generator=g))
    # the threshold: the 80th percentile of the CPU path's gradient norms (a real mix of both)
    probe = densify_once(cloud_gaussians(n, "torch"), v, weights, 1e9, "cpu")
    seen = (probe["radii"] > 0).all(-1)
    norms = (probe["grad"] * torch.tensor([res / 2 * 3, res / 2 * 3])).norm(dim=-1)
    avg = (norms * seen).sum(0) / seen.sum(0).clamp_min(1)
    thr = float(torch.quantile(avg[seen.any(0)], 0.8))
    cpu = densify_once(cloud_gaussians(n, "torch"), v, weights, thr, "cpu")
    gpu = densify_once(cloud_gaussians(n, "gsplat"), v, weights, thr, "cuda")
    r_c, r_g = cpu["radii"], gpu["radii"]
    seen_c, seen_g = (r_c > 0).all(-1), (r_g > 0).all(-1)
    n_seen_diff = int((seen_c != seen_g).sum())
    n_rad_diff = int((r_c != r_g).any(-1)[seen_c & seen_g].sum())
    both = seen_c & seen_g
    rel_grad = float((gpu["grad"][both] - cpu["grad"][both]).norm() / cpu["grad"][both].norm())
    norm = lambda r: (r["grad"] * torch.tensor([res / 2 * 3, res / 2 * 3])).norm(dim=-1)  # noqa: E731
    avg_c = (norm(cpu) * seen_c).sum(0) / seen_c.sum(0).clamp_min(1)
    avg_g = (norm(gpu) * seen_g).sum(0) / seen_g.sum(0).clamp_min(1)
    high_c, high_g = avg_c > thr, avg_g > thr
    # undecidable by round-off: within 1% of the threshold, or seen in different views (a
    # radius one pixel apart at the image border: counted and bounded above)
    borderline = ((avg_c - thr).abs() <= 0.01 * thr) | (seen_c != seen_g).any(0)
    small = cpu["scales_max"] <= 0.04  # grow_scale3d * scene_scale
    print(f"\n[densify N={n}, {res}px, 3 views, threshold {thr:.4g}] seen sets differ in {n_seen_diff} of "
          f"{seen_c.numel()} (camera, Gaussian) pairs, radii in {n_rad_diff}; view-space gradient rel. L2 error "
          f"{rel_grad:.2e}; grow decisions differ for {int((high_c != high_g).sum())} Gaussians "
          f"({int(borderline.sum())} borderline); clone {int((high_c & small).sum())} / split "
          f"{int((high_c & ~small).sum())} / prune {int((cpu['opac'] < 0.1).sum())}; "
          f"count {n} -> cpu {cpu['count_after']}, cuda {gpu['count_after']}")
    assert n_seen_diff <= 0.001 * seen_c.numel() and n_rad_diff <= 0.01 * int(both.sum())
    assert rel_grad <= 1e-2
    assert bool((high_c == high_g)[~borderline].all())
    assert abs(cpu["count_after"] - gpu["count_after"]) <= 2 * int(borderline.sum())
    assert cpu["count_after"] != n and int((high_c & small).sum()) > 0 and int((high_c & ~small).sum()) > 0
    # the kept and cloned Gaussians (everything but the split children, whose positions are
    # drawn from each device's RNG) are the same Gaussians in the same order
    if cpu["count_after"] == gpu["count_after"] and bool((high_c == high_g).all()):
        n_children = 2 * int((high_c & ~small & (cpu["opac"] >= 0.1)).sum())
        keep = cpu["count_after"] - n_children
        torch.testing.assert_close(gpu["means"][:keep], cpu["means"][:keep], atol=1e-6, rtol=0)


def test_densifying_run_on_cuda(tmp_path, monkeypatch):
    """The trainer on CUDA: gsplat's rasterizer feeds the strategy through the same hook."""
    import json

    from src.api import compose, train

    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path / "cache"))
    cfg = compose(["representation=gaussians", "device=cuda", "trainer.max_steps=30",
                   "representation.n_gaussians=2048", "representation.densify.refine_every=10",
                   "representation.densify.refine_start_iter=0",  # ShapesWorld's preset starts at 300
                   "representation.densify.grow_grad2d=0.05", "representation.sh_degree=1",
                   "representation.sh_degree_interval=10", "camera.n_eval_views=4",
                   "trainer.export=false"])  # the strategy, not the export (imageio-ffmpeg)
    metrics, trainer = train(cfg, tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    print(f"\n[cuda run, 30 steps] n_gaussians 2048 -> {saved['n_gaussians']}, precision {saved['precision']}")
    assert saved["n_gaussians"] == trainer.c.representation.counts()[0] != 2048
    assert trainer.c.representation.active_sh_degree == 1
