"""The multi-view prior on ShapesWorld (``view_conditioning=multiview``, src/backbones/shapes.py:
``multiview_eps``): float64 brute force over the enumerated view sets, V = 1 is the camera prior,
the Janus world's back view denoised without a face; every method through the trainer on
``camera=multiview``."""

from __future__ import annotations

import itertools

import pytest
import torch

from src.backbones.shapes import ShapesWorld, ideal_eps, mixture_log_density, multiview_eps
from src.cameras_orbit import OrbitSampler, make_views
from src.diffusion import alpha_sigma

SMALL = dict(shapes=("sphere", "cube"), colors=("red", "blue"), n_azimuths=8, n_elevations=2,
             elevation_range=(0.0, 70.0))


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path_factory.getbasetemp() / "shapes_cache"))


def _noisy(world, x0: torch.Tensor, t: torch.Tensor, seed: int) -> torch.Tensor:
    """x_t = alpha x0 + sigma eps in float64; x0 (B, D)."""
    alpha, sigma = alpha_sigma(world.alphas_cumprod, t)
    g = torch.Generator().manual_seed(seed)
    return alpha[:, None] * x0.double() + sigma[:, None] * torch.randn(x0.shape, generator=g, dtype=torch.float64)


def _set_views(a0: float, V: int, elevation: float, S: int = 1, size: int = 8):
    """S sets of V views at a0 + k 360 / V (+ 17 deg per set), one elevation."""
    az = torch.cat([a0 + 17.0 * s + torch.arange(V) * (360.0 / V) for s in range(S)])
    n = az.numel()
    return make_views(az, torch.full((n,), elevation), torch.full((n,), 2.0), torch.full((n,), 40.0), size, size)


@pytest.mark.parametrize("V", [2, 3, 4])
def test_posed_multiview_eps_is_the_ideal_denoiser_of_the_world_view_sets(V):
    """Posed views (one image per class at the nearest world camera): the V-view prior is the
    mixture over classes of the concatenated views, p(X) = sum_k pi_k N(X; alpha [x_k(c_1); ...;
    x_k(c_V)], v I). Brute force: ideal_eps and autograd of its log density on the (V D)-vectors
    of the enumerated sets, float64; two sets per batch at once, t from 0 to 990."""
    world = ShapesWorld(resolution=8, smoothing=0.05, cache=False, view_conditioning="multiview",
                        views_per_set=V, **SMALL)
    S = 2
    views = _set_views(10.0, V, 35.0, S)  # off the world's grid
    w = world.embed("a cube") * (1.0 + (world.class_idx == 3))  # pi = (1/3, 2/3): the prior counts once
    emb = world.condition_on_views((w / w.sum()).expand(V * S, -1), views)
    data = world.data.double()
    x0 = data[emb.argmax(1)]  # each view: its nearest-camera image of some class
    t = torch.tensor([10, 990]).repeat_interleave(V)  # one t per set (the brute force has one)
    x_t = _noisy(world, x0, t, seed=V)
    alpha, sigma = alpha_sigma(world.alphas_cumprod, t)
    got = multiview_eps(x_t, alpha, sigma, data, emb, world.class_idx, world.smoothing, V)
    for s in range(S):
        rows = slice(s * V, (s + 1) * V)
        w = emb[rows].double()  # (V, N): pi_k on class k's image at each view's camera
        classes = sorted(set(world.class_idx[w[0] > 0].tolist()))
        sets = torch.stack([torch.cat([data[int(((w[v] > 0) & (world.class_idx == k)).nonzero())]
                                       for v in range(V)]) for k in classes])  # (K, V D)
        pi = torch.stack([w[0][world.class_idx == k].sum() for k in classes])[None]
        X, a, sg = x_t[rows].reshape(1, -1), alpha[rows][:1], sigma[rows][:1]
        want = ideal_eps(X, a, sg, sets, pi, world.smoothing, chunk_size=None)
        torch.testing.assert_close(got[rows].reshape(1, -1), want, rtol=1e-9, atol=1e-9)
        Xg = X.clone().requires_grad_(True)
        (score,) = torch.autograd.grad(mixture_log_density(Xg, a, sg, sets, pi, world.smoothing).sum(), Xg)
        torch.testing.assert_close(got[rows].reshape(1, -1), -sg[:, None] * score, rtol=1e-7, atol=1e-7)


def test_unposed_multiview_eps_is_the_mixture_over_every_combination():
    """Any per-view weights (here the prompt's own, over every view of each class): the set's
    data are every combination of one image of class k per view, weight pi_k prod_v w_v,i / pi_k,v;
    brute force over all 2 x 16^2 sets of "a cube" for V = 2, and a lone last row (B = 3) is the
    single-view prior of its weights."""
    world = ShapesWorld(resolution=8, smoothing=0.05, cache=False, view_conditioning="multiview",
                        views_per_set=2, **SMALL)
    data = world.data.double()
    w = torch.stack([world.embed("a cube"), world.embed("a cube, front view"), world.embed("a cube")]).double()
    t = torch.tensor([300, 300, 600])
    x_t = _noisy(world, data[w.argmax(1)], t, seed=0)
    alpha, sigma = alpha_sigma(world.alphas_cumprod, t)
    got = multiview_eps(x_t, alpha, sigma, data, w, world.class_idx, world.smoothing, 2)
    sets, weights = [], []
    for k in world.prompt_classes("a cube"):
        in_k = world.class_idx == k
        pi = [float(w[v][in_k].sum()) for v in range(2)]
        for i, j in itertools.product(in_k.nonzero().squeeze(1).tolist(), repeat=2):
            if w[0, i] > 0 and w[1, j] > 0:
                sets.append(torch.cat([data[i], data[j]]))
                weights.append(0.5 * (pi[0] + pi[1]) * float(w[0, i]) / pi[0] * float(w[1, j]) / pi[1])
    sets, weights = torch.stack(sets), torch.tensor(weights, dtype=torch.float64)
    want = ideal_eps(x_t[:2].reshape(1, -1), alpha[:1], sigma[:1], sets, (weights / weights.sum())[None],
                     world.smoothing, chunk_size=None)
    torch.testing.assert_close(got[:2].reshape(1, -1), want, rtol=1e-9, atol=1e-9)
    lone = ideal_eps(x_t[2:], alpha[2:], sigma[2:], data, w[2:], world.smoothing, chunk_size=None)
    torch.testing.assert_close(got[2:], lone, rtol=1e-9, atol=1e-9)


def test_one_view_per_set_is_the_camera_prior():
    """V = 1: the multi-view prior is the camera prior (view_conditioning=camera, a = 1) at every
    camera, on and off the world's grid, with and without CFG's null row."""
    kw = dict(resolution=8, smoothing=0.02, cache=False, **SMALL)
    mv = ShapesWorld(view_conditioning="multiview", views_per_set=1, **kw)
    cam = ShapesWorld(view_conditioning="camera", **kw)
    az, el = torch.tensor([0.0, 180.0, 33.0, -100.0]), torch.tensor([0.0, 70.0, 12.0, 50.0])
    views = make_views(az, el, torch.full((4,), 2.0), torch.full((4,), 40.0), 8, 8)
    for prompt in ("a cube", "a red sphere", "a blue object"):
        emb = cam.embed(prompt).expand(4, -1)
        e_mv, e_cam = mv.condition_on_views(emb, views), cam.condition_on_views(emb, views)
        torch.testing.assert_close(e_mv, e_cam, rtol=0, atol=1e-7)
        t = torch.tensor([5, 200, 600, 950])
        x_t = _noisy(cam, cam.data.double()[e_cam.argmax(1)], t, seed=1).reshape(4, 3, 8, 8)
        torch.testing.assert_close(mv.predict_eps(x_t, t, e_mv), cam.predict_eps(x_t, t, e_cam),
                                   rtol=1e-10, atol=1e-10)
        null = cam.embed("").expand(4, -1)
        e_u = mv.condition_on_views(null, views, null=True)
        torch.testing.assert_close(e_u, cam.condition_on_views(null, views), rtol=0, atol=1e-7)
        torch.testing.assert_close(mv.eps(x_t, t, e_mv, e_u, 7.5), cam.eps(x_t, t, e_cam, e_u, 7.5),
                                   rtol=1e-10, atol=1e-10)


def test_multiview_prior_denoises_the_front_facing_worlds_back_without_a_face():
    """The Janus world photographed facing the face (experiment=shapes_janus_front): the view-prompt
    prior's denoised back view shows a face (tests/test_shapes.py); the multi-view prior's data are
    the objects from all around, so a set of 4 views of the truth, noised at any level, is denoised
    with the face on its front view only."""
    kw = dict(resolution=32, marker=True, marker_radius=0.35, light_dir=(0.0, 0.0, 1.0),
              azimuth_window=10.0, view_adherence={"side": 0.0, "back": 0.0}, **SMALL)
    world = ShapesWorld(view_conditioning="multiview", views_per_set=4, **kw)
    red_sphere = world.prompt_classes("a red sphere")[0]
    views = _set_views(0.0, 4, 0.0, size=32)  # front, side, back, side
    x0 = world.render_classes([red_sphere], views)[0]  # (4, H, W, 3)
    cond = world.conditioning("a red sphere", view_dependent=True)
    emb = world.condition_on_views(cond.select(views.view_idx), views)
    for step in (100, 300, 500, 700):
        t = torch.full((4,), step)
        x_t = _noisy(world, world.encode(x0).reshape(4, -1), t, seed=step).reshape(4, 3, 32, 32)
        x0hat = world.x0_mean(x_t.float(), t, emb)
        shown = world.decode(x0hat).clamp(0, 1)
        seen, none, shows = world.face_views(shown, views, red_sphere)
        assert shows.tolist() == [True, False, False, False] and none[2]
        assert torch.equal(seen, shows), step


def test_multiview_config_and_checks():
    """backbone.view_conditioning=multiview reads V from the camera group's sets; a bad V is named."""
    from src.api import compose
    from src.checks import ConfigError

    cfg = compose(["backbone.view_conditioning=multiview", "camera=multiview"])
    assert cfg.backbone.views_per_set == 4 and cfg.camera.views_per_set == 4
    assert compose([]).backbone.views_per_set == 1
    bad = dict(cfg.backbone, views_per_set=0)
    with pytest.raises(ConfigError, match="backbone.views_per_set"):
        ShapesWorld.check_config(bad, "backbone")
    s = OrbitSampler(batch_size=8, views_per_set=4)
    assert len(s.sample(0, torch.Generator().manual_seed(0))) == 8
    # the presets of sweeps/shapes_multiview.yaml: the issue's command, and "a cone" on 4-view sets
    from omegaconf import OmegaConf

    preset = compose(["experiment=shapes_janus_front_multiview"])
    issue = compose(["experiment=shapes_janus_front", "backbone.view_conditioning=multiview", "camera=multiview"])
    assert OmegaConf.to_container(preset, resolve=True) == OmegaConf.to_container(issue, resolve=True)
    cone = compose(["experiment=shapes_modes_multiview", "representation=gaussians"])
    assert (cone.prompt, cone.backbone.view_conditioning, cone.camera.views_per_set) == ("a cone", "multiview", 4)


# every method on every 3D representation, a few steps through the trainer on camera=multiview
TINY_WORLD = ["prompt=a red cube", "backbone.shapes=[sphere,cube]", "backbone.colors=[red,blue]", "backbone.n_azimuths=8",
              "backbone.n_elevations=2", "backbone.resolution=8", "backbone.cache=false"]
REPRESENTATIONS = {"nerf": [], "gaussians": ["representation.n_gaussians=256"]}


@pytest.mark.parametrize("representation", list(REPRESENTATIONS))
@pytest.mark.parametrize("method", __import__("src.configs", fromlist=["x"]).guidance_names())
def test_each_method_runs_on_the_multiview_prior(method, representation, tmp_path, monkeypatch):
    """Every estimator on sets of 4 views (camera=multiview) under the multi-view prior: finite
    steps, and every prior call on posed views (one image per class: the sets' conditioning) holds
    whole sets of 4 in order (a set is never split or shuffled by an estimator's batching)."""
    from src.api import compose
    from src.trainer import Trainer

    calls = []
    original = ShapesWorld.predict_eps

    def recording(self, x_t, t, emb, chunk_size=None):
        posed = bool(((emb > 0).sum(1) <= self.n_classes).all())
        calls.append((x_t.shape[0], posed, emb))
        return original(self, x_t, t, emb, chunk_size)

    monkeypatch.setattr(ShapesWorld, "predict_eps", recording)
    cfg = compose(["backbone=shapes", "backbone.view_conditioning=multiview", "camera=multiview",
                   f"representation={representation}", f"guidance={method}", "device=cpu",
                   "trainer.max_steps=2", "trainer.progress=false", "trainer.export=false",
                   *TINY_WORLD, *REPRESENTATIONS[representation]])
    trainer = Trainer(cfg, tmp_path / "run")
    for step in range(2):
        views = trainer.c.cameras.sample(step, torch.Generator().manual_seed(0))
        assert len(views) == 4 and views.elevation_deg.unique().numel() == 1
        logs = trainer.train_step(step)
        assert all(torch.isfinite(torch.tensor(float(v))) for v in logs.values()), logs
        grads = [p.grad for p in trainer.c.representation.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
    posed = [(B, emb) for B, is_posed, emb in calls if is_posed]
    assert posed and all(B % 4 == 0 for B, _ in posed)
    for B, emb in posed:  # consecutive rows of a set: 4 different cameras (azimuths 90 deg apart)
        cams = emb.view(B // 4, 4, -1).argmax(-1) % trainer.c.backbone.n_views
        assert all(len(set(c.tolist())) == 4 for c in cams), cams
