"""ShapesWorld (src/backbones/shapes.py): exact prior, prompts, cache, renderer, metrics."""

from __future__ import annotations

import math

import pytest
import torch

from src.backbones.shapes import ShapesWorld, ideal_eps, mixture_log_density
from src.backbones.shapes_render import render_coverage
from src.cameras import VIEW_NAMES
from src.cameras_orbit import make_views
from src.diffusion import alpha_sigma

SMALL = dict(shapes=("sphere", "cube"), colors=("red", "blue"), n_azimuths=8, n_elevations=2,
             elevation_range=(0.0, 70.0))


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    """One cache folder for the whole module (so each small world renders once)."""
    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path_factory.getbasetemp() / "shapes_cache"))


@pytest.fixture(scope="module")
def tiny():
    """8 px, for the prior's math (the dataset is just some vectors)."""
    return ShapesWorld(resolution=8, smoothing=0.05, cache=False, **SMALL)


def _autograd_eps(x_t, alpha, sigma, data, weights, s):
    x = x_t.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(mixture_log_density(x, alpha, sigma, data, weights, s).sum(), x)
    return -sigma[:, None] * g  # score = -eps / sigma


@pytest.mark.parametrize("s", [0.0, 0.1])
def test_ideal_eps_is_minus_sigma_times_score(s):
    g = torch.Generator().manual_seed(0)
    N, D, B = 7, 12, 5
    data = torch.rand(N, D, generator=g, dtype=torch.float64) * 2 - 1
    weights = torch.rand(B, N, generator=g, dtype=torch.float64)
    weights[1, :3] = 0  # some samples see only part of the data
    weights = weights / weights.sum(-1, keepdim=True)
    abar = torch.linspace(0.999, 0.01, B, dtype=torch.float64)
    alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
    x_t = alpha[:, None] * data[:B] + sigma[:, None] * torch.randn(B, D, generator=g, dtype=torch.float64)
    want = _autograd_eps(x_t, alpha, sigma, data, weights, s)
    for chunk in (None, 1, 3):
        torch.testing.assert_close(ideal_eps(x_t, alpha, sigma, data, weights, s, chunk), want)


def test_world_eps_matches_autograd_and_chunking(tiny):
    emb = torch.stack([tiny.embed("a red cube"), tiny.embed(""), tiny.embed("a sphere, back view")])
    t = torch.tensor([10, 500, 990])
    g = torch.Generator().manual_seed(1)
    x0 = tiny.data[[5, 40, 60]].reshape(3, 3, 8, 8).double()
    alpha, sigma = alpha_sigma(tiny.alphas_cumprod, t)
    x_t = alpha.view(-1, 1, 1, 1) * x0 + sigma.view(-1, 1, 1, 1) * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    eps = tiny.predict_eps(x_t, t, emb)
    assert eps.shape == x_t.shape and eps.dtype == torch.float64
    want = _autograd_eps(x_t.reshape(3, -1), alpha, sigma, tiny.data.double(), emb.double(), tiny.smoothing)
    torch.testing.assert_close(eps.reshape(3, -1), want)
    torch.testing.assert_close(tiny.predict_eps(x_t, t, emb, chunk_size=5), tiny.predict_eps(x_t, t, emb, chunk_size=None))
    # float32 in, float32 out; CFG path of the base class works with (B, N) embeddings
    e32 = tiny.eps(x_t.float(), t, emb, null=tiny.embed("").expand(3, -1), scale=7.5)
    assert e32.dtype == torch.float32 and torch.isfinite(e32).all()


def test_denoiser_recovers_a_data_image(tiny):
    """At small t, E[x0 | x_t = alpha x_i] is x_i itself (the ideal denoiser)."""
    i = int(tiny.embed("a blue sphere").nonzero()[0])
    x0 = tiny.data[i].reshape(1, 3, 8, 8)
    t = torch.tensor([0])
    alpha, _ = alpha_sigma(tiny.alphas_cumprod, t)
    x_t = (alpha.view(-1, 1, 1, 1) * x0).float()
    torch.testing.assert_close(tiny.x0_mean(x_t, t, tiny.embed("a blue sphere")[None]), x0, atol=1e-3, rtol=0)


def test_cache_hit_on_second_construction(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path / "cache"))
    a = ShapesWorld(resolution=8, **SMALL)
    b = ShapesWorld(resolution=8, **SMALL)
    _ = a.data, b.data  # rendered / loaded on first use
    assert not a.cache_hit and b.cache_hit and a.cache_path == b.cache_path
    assert a.cache_path.parent == tmp_path / "cache" / "shapes"
    assert [p.name for p in a.cache_path.parent.iterdir()] == [a.cache_path.name]  # no temp files left
    assert torch.equal(a.data, b.data)
    c = ShapesWorld(resolution=8, marker=True, **SMALL)  # a different world, a different key
    _ = c.data
    assert not c.cache_hit and c.cache_path != a.cache_path


def test_prompt_grammar(tiny):
    V = tiny.n_views
    w = tiny.embed("a red cube")
    assert w.shape == (tiny.data.shape[0],) and abs(float(w.sum()) - 1) < 1e-6
    sel = w > 0
    assert sel.sum() == V
    assert (tiny.shape_idx[sel] == 1).all() and (tiny.color_idx[sel] == 0).all()
    assert (tiny.embed("A Red Cube.") == w).all()
    assert (tiny.embed("a cube") > 0).sum() == 2 * V
    assert (tiny.embed("a red object") > 0).sum() == 2 * V
    assert (tiny.embed("") > 0).all()
    assert tiny.prompt_classes("a cube") == [2, 3] and tiny.class_name(2) == "red cube"
    fresh = ShapesWorld(resolution=64, cache=False, **SMALL)
    with pytest.raises(ValueError) as e:
        fresh.validate_prompt("a purple dragon")
    assert fresh._data is None  # failed at once: nothing was rendered
    msg = str(e.value)
    for word in ("dragon", "purple", "sphere", "cube", "red", "blue", "back view"):
        assert word in msg
    with pytest.raises(ValueError, match="two colors"):
        tiny.embed("a red blue cube")
    with pytest.raises(ValueError, match="unknown"):
        tiny.embed("a cube, sideways")


def test_view_prompt_restricts_views(tiny):
    back = tiny.embed("a red cube, back view") > 0
    assert back.sum() > 0
    az, el = tiny.azimuth_deg[back], tiny.elevation_deg[back]
    assert (az.abs() >= 135).all() and (el <= 60).all()
    assert (tiny.embed("a red cube, overhead view") > 0).sum() == tiny.n_azimuths  # the 70 deg ring
    # the four view prompts split the class's images
    total = sum(int((tiny.embed(f"a red cube, {v} view") > 0).sum()) for v in VIEW_NAMES)
    assert total == tiny.n_views
    cond = tiny.conditioning("a red cube", view_dependent=True)
    assert cond.cond.shape == (4, tiny.data.shape[0])
    assert torch.equal(cond.select(torch.tensor([2]))[0], tiny.embed("a red cube, back view"))
    low = ShapesWorld(resolution=8, **{**SMALL, "elevation_range": (0.0, 30.0)})
    with pytest.raises(ValueError, match="matches no image"):
        low.embed("a cube, overhead view")


def test_front_bias_weights():
    world = ShapesWorld(resolution=8, front_bias=1.5, **SMALL)
    w = world.embed("a red cube")
    front = w[(world.azimuth_deg == 0) & (w > 0)]
    back = w[(world.azimuth_deg == 180) & (w > 0)]
    torch.testing.assert_close(front / back, torch.full_like(front, math.exp(3.0)))


def test_view_adherence_mixes_the_view_prompt_with_every_view():
    """a * (the view's images) + (1 - a) * (every view), both front-biased: a distribution."""
    obeyed = ShapesWorld(resolution=8, front_bias=1.5, **SMALL)
    loose = ShapesWorld(resolution=8, front_bias=1.5, view_adherence=0.3, **SMALL)
    back, every = obeyed.embed("a red cube, back view"), obeyed.embed("a red cube")
    w = loose.embed("a red cube, back view")
    torch.testing.assert_close(w, 0.3 * back + 0.7 * every)
    assert abs(float(w.sum()) - 1.0) < 1e-6
    # the back prompt now puts most of its mass where the front (the face) is seen
    front = (loose.azimuth_deg.abs() <= 45) & (w > 0)
    assert float(w[front].sum()) > float(w[(loose.azimuth_deg.abs() >= 135)].sum())
    torch.testing.assert_close(loose.embed("a red cube"), every)  # no view: unchanged
    ignored = ShapesWorld(resolution=8, view_adherence=0.0, **SMALL)
    torch.testing.assert_close(ignored.embed("a red cube, back view"), ignored.embed("a red cube"))


def test_view_adherence_per_view_name():
    """A mapping gives each view prompt its own a (views not named: 1, obeyed)."""
    obeyed = ShapesWorld(resolution=8, front_bias=1.5, **SMALL)
    loose_back = ShapesWorld(resolution=8, front_bias=1.5, view_adherence={"back": 0.3}, **SMALL)
    every = obeyed.embed("a red cube")
    torch.testing.assert_close(loose_back.embed("a red cube, back view"),
                               0.3 * obeyed.embed("a red cube, back view") + 0.7 * every)
    for view in ("front", "side", "overhead"):
        torch.testing.assert_close(loose_back.embed(f"a red cube, {view} view"), obeyed.embed(f"a red cube, {view} view"))
    from src.api import compose
    from src.checks import ConfigError

    cfg = compose(["backbone=shapes"]).backbone
    with pytest.raises(ConfigError, match=r"backbone.view_adherence=.*mapping of view names \(front, side, back, overhead\)"):
        ShapesWorld.validate_config({**cfg, "view_adherence": {"rear": 0.5}}, "backbone")
    with pytest.raises(ConfigError, match=r"backbone.view_adherence.back=1.5 is invalid: must be >= 0.0 and <= 1.0"):
        ShapesWorld.validate_config({**cfg, "view_adherence": {"back": 1.5}}, "backbone")


def test_encode_decode():
    world = ShapesWorld(resolution=8, **SMALL)
    rgb = torch.rand(2, 8, 8, 3, requires_grad=True)
    x = world.encode(rgb)
    assert x.shape == (2, 3, 8, 8) and x.requires_grad
    torch.testing.assert_close(world.decode(x), rgb)
    imgs = world.images()
    assert imgs.shape == (world.data.shape[0], 8, 8, 3) and imgs.min() >= 0 and imgs.max() <= 1


def test_renderer_sphere_silhouette_matches_projection():
    """The renderer and get_rays agree with pinhole geometry: a sphere of radius R at
    distance d covers a disc of radius f tan(asin(R / d)) pixels."""
    H, dist, fovy = 32, 2.0, 40.0
    v = make_views(torch.tensor([30.0]), torch.tensor([20.0]), torch.tensor([dist]), torch.tensor([fovy]), H, H)
    cov = render_coverage("sphere", v, supersample=4)
    area = float((1 - cov[0, ..., 2]).sum())
    f = 0.5 * H / math.tan(math.radians(fovy) / 2)
    r = f * math.tan(math.asin(0.5 / dist))
    assert abs(area / (math.pi * r * r) - 1) < 0.02


def test_light_dir_sets_the_shading_and_the_cache_key():
    """A sphere lit along the vertical axis looks the same from every azimuth; the default
    light (from above and the front) makes its back darker than its front. The light is part
    of the world's cache key."""
    views = make_views(torch.tensor([0.0, 90.0, 180.0]), torch.full((3,), 20.0), torch.full((3,), 2.0),
                       torch.full((3,), 40.0), 16, 16)
    top = render_coverage("sphere", views, light_dir=(0.0, 0.0, 1.0))[..., 0]
    for side in (top[1], top[2]):  # 1e-4: sphere tracing and finite-difference normals
        torch.testing.assert_close(side, top[0], atol=1e-4, rtol=0)
    lit = render_coverage("sphere", views)[..., 0]
    assert float(lit[0].sum()) > 1.2 * float(lit[2].sum())
    default = ShapesWorld(resolution=8, **SMALL)
    assert ShapesWorld(resolution=8, light_dir=(0, 0, 1), **SMALL).world_key() != default.world_key()
    assert ShapesWorld(resolution=8, light_dir=(0.5, 0.3, 1.0), **SMALL).world_key() == default.world_key()


def test_marker_radius_sets_the_face_size_and_the_cache_key():
    """The face disc's radius (backbone.marker_radius): a larger disc covers more of the front
    view, pixel for pixel as the area of a spherical cap; the default keeps the old cache key."""
    import math

    views = make_views(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([2.0]), torch.tensor([40.0]), 32, 32)
    cover = {r: float(render_coverage("sphere", views, markers=((1.0, 0.0, 0.0),), marker_radius=r,
                                      supersample=4)[..., 3].sum()) for r in (0.15, 0.3)}
    # projected area of a disc of radius r on the sphere, seen head-on at this distance: ~pi r^2
    # (perspective enlarges both alike), so the ratio is ~(0.3 / 0.15)^2 = 4
    assert 3.5 < cover[0.3] / cover[0.15] < 4.5, cover
    assert cover[0.15] > 0.5 * math.pi * 0.15**2 / (2 * 2.0 * math.tan(math.radians(20))) ** 2 * 32**2
    default = ShapesWorld(resolution=8, marker=True, **SMALL)
    assert ShapesWorld(resolution=8, marker=True, marker_radius=0.2, **SMALL).world_key() == default.world_key()
    assert ShapesWorld(resolution=8, marker=True, marker_radius=0.35, **SMALL).world_key() != default.world_key()
    # no marker, no disc: its radius does not change the images
    plain = ShapesWorld(resolution=8, **SMALL).world_key()
    assert ShapesWorld(resolution=8, marker_radius=0.35, **SMALL).world_key() == plain


def test_camera_view_conditioning_is_the_exact_prior_of_the_camera_mixed_by_adherence():
    """view_conditioning=camera: at a camera of the world, a fully obeyed view prompt's prior is
    the one image seen from there; the back obeyed at a = 0.1 keeps 0.9 of its view prompt's
    prior; view_conditioning=prompt (SD's case, the Janus worlds') leaves the view prompts' weights
    alone. camera is the default (conf/backbone/shapes.yaml and the class agree)."""
    from src.cameras import VIEW_NAMES, view_prompt_index

    kw = dict(resolution=8, **SMALL, view_adherence={"back": 0.1})
    world = ShapesWorld(**kw)
    assert world.view_conditioning == "camera"
    az, el = torch.tensor([0.0, 180.0, 90.0]), torch.tensor([0.0, 0.0, 70.0])  # cameras of the world
    views = make_views(az, el, torch.full((3,), 2.0), torch.full((3,), 40.0), 8, 8)
    views.view_idx = view_prompt_index(az, el)
    cond = world.conditioning("a red sphere", view_dependent=True)
    emb = cond.select(views.view_idx)
    out = world.condition_on_views(emb, views)
    torch.testing.assert_close(out.sum(1), torch.ones(3))
    red_sphere = (world.class_idx == world.prompt_classes("a red sphere")[0])
    for b in range(3):
        at = red_sphere & (world.azimuth_deg == az[b]) & (world.elevation_deg == el[b])
        assert int(at.sum()) == 1
        a = 0.1 if VIEW_NAMES[int(views.view_idx[b])] == "back" else 1.0
        want = a * at.float() + (1 - a) * emb[b]
        torch.testing.assert_close(out[b], want)
    assert torch.equal(ShapesWorld(view_conditioning="prompt", **kw).condition_on_views(emb, views), emb)


def test_azimuth_window_is_a_collection_without_the_back():
    """azimuth_window=180: only the front half is photographed. The back view prompt then has no
    image: refused when obeyed (a = 1, naming the keys), its prompt's every view when a < 1."""
    kw = dict(resolution=8, **SMALL, marker=True)
    world = ShapesWorld(azimuth_window=180.0, view_adherence={"back": 0.0}, **kw)
    az = torch.remainder(world.azimuth_deg + 180.0, 360.0) - 180.0
    assert torch.equal(world.view_weight > 0, az.abs() <= 90.0)
    back = world.embed("a red sphere, back view")
    torch.testing.assert_close(back, world.embed("a red sphere"))
    assert float(back[az.abs() > 90.0].sum()) == 0.0
    with pytest.raises(ValueError, match=r"no image in the collection \(backbone.azimuth_window=180\).*"
                                         r"backbone.view_adherence.back < 1"):
        ShapesWorld(azimuth_window=180.0, **kw).embed("a red sphere, back view")
    # the images themselves are the same: the cache key does not change
    assert world.world_key() == ShapesWorld(**kw).world_key()


def test_front_facing_collection_pulls_the_faceless_back_toward_a_face():
    """Why experiment=shapes_janus_front shows Janus (README, "What ShapesWorld shows"): with the
    photos facing the face (azimuth_window=10) and the back view prompt ignored, the exact
    prior's denoised estimate of the truth's faceless back view shows a face at every noise
    level; the full collection, obeying "back view", keeps it faceless. The prior is still the
    ideal denoiser of its collection: only the collection differs."""
    from src.cameras import ViewBatch
    from src.diffusion import alpha_sigma

    kw = dict(resolution=32, marker=True, marker_radius=0.35, light_dir=(0.0, 0.0, 1.0), **SMALL)
    full = ShapesWorld(**kw)
    facing = ShapesWorld(azimuth_window=10.0, view_adherence={"side": 0.0, "back": 0.0}, **kw)
    red_sphere = full.prompt_classes("a red sphere")[0]
    at = ((full.embed("a red sphere") > 0) & (full.azimuth_deg == 180.0) & (full.elevation_deg == 0.0))
    sel = at.nonzero().squeeze(1)
    views = full.world_views()
    back = ViewBatch(**{k: (v[sel] if isinstance(v, torch.Tensor) else v)
                        for k in views.__dataclass_fields__ for v in [getattr(views, k)]})
    x0 = full.images()[sel]  # (1, H, W, 3)
    assert full.janus_rate(x0, back, red_sphere) == 0.0
    g = torch.Generator().manual_seed(0)
    for step in (100, 300, 500, 700):
        t = torch.full((4,), step)
        alpha, sigma = alpha_sigma(full.alphas_cumprod, t)
        x_t = alpha.view(-1, 1, 1, 1) * x0 + sigma.view(-1, 1, 1, 1) * torch.randn((4, *x0.shape[1:]), generator=g)
        for world, want in ((facing, 1.0), (full, 0.0)):
            emb = world.embed("a red sphere, back view").expand(4, -1)
            x0hat = world.x0_mean(x_t.permute(0, 3, 1, 2), t, emb).permute(0, 2, 3, 1).clamp(0, 1)
            rates = [full.janus_rate(x0hat[i:i + 1], back, red_sphere) for i in range(4)]
            assert rates == [want] * 4, (step, world.azimuth_window, rates)


def test_metrics_on_truth_and_janus():
    world = ShapesWorld(resolution=32, marker=True, **SMALL)
    red_cube = world.prompt_classes("a red cube")[0]
    # the data set's own images at their own cameras (the 0 deg elevation ring)
    views = world.world_views()
    ring = torch.arange(world.n_azimuths)
    sel = world.embed("a red cube").nonzero().squeeze(1)[ring]
    from src.cameras import ViewBatch

    ring_views = ViewBatch(**{
        k: (getattr(views, k)[ring] if isinstance(getattr(views, k), torch.Tensor) else getattr(views, k))
        for k in views.__dataclass_fields__
    })
    m = world.evaluate(world.images()[sel], ring_views, "a red cube")
    assert m["precision"] == 1.0 and m["mode_id"] == red_cube and m["janus_rate"] == 0.0
    assert world.evaluate(world.images()[sel], ring_views, "a cube")["precision"] == 1.0
    assert world.evaluate(world.images()[sel], ring_views, "a blue sphere")["precision"] == 0.0
    # a two-faced object: the marker also on its back
    two = world.render_classes([red_cube], ring_views, markers=[(1, 0, 0), (-1, 0, 0)])[0]
    m2 = world.evaluate(two, ring_views, "a red cube")
    assert m2["janus_rate"] > 0.5 and m2["mode_id"] in (red_cube, -1)
    four = world.render_classes([red_cube], ring_views, markers=[(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0)])[0]
    assert world.evaluate(four, ring_views, "a red cube")["janus_rate"] == 1.0
    # a uniformly dark object is not a face on every side: the dark patch must be framed by the
    # object's colour (before, this scored 1.0; SDS runs that painted the sphere black did)
    black = world.images()[sel].clone()
    black[(black - world.background.to(black)).abs().max(-1).values > 0.05] = 0.02
    assert world.evaluate(black, ring_views, "a red cube")["janus_rate"] == 0.0
    # a blank image is no class
    m3 = world.evaluate(torch.ones_like(two), ring_views, "a red cube")
    assert m3["precision"] == 0.0 and m3["mode_id"] == -1


def test_face_recall_tells_a_faceless_object_from_a_janus_free_one():
    """face_recall: the share of views where the truth shows its face and the render does too. The
    truth recalls every face; a faceless object (the class rendered without its marker) has
    janus_rate 0 like the truth but face_recall 0; a face on every side recalls every face too."""
    world = ShapesWorld(resolution=32, marker=True, **SMALL)
    red_cube = world.prompt_classes("a red cube")[0]
    views = world.world_views().select(torch.arange(world.n_azimuths))  # the 0 deg ring
    truth = world.render_classes([red_cube], views)[0]
    seen, none, shows = world.face_views(truth, views, red_cube)
    # the ring of 8 azimuths: the face shows at 0 and +-45 deg, not at all from 90 deg round the back
    assert shows.nonzero().squeeze(1).tolist() == [0, 1, 7] and none.nonzero().squeeze(1).tolist() == [2, 3, 4, 5, 6]
    assert torch.equal(seen, shows)
    m = world.evaluate(truth, views, "a red cube")
    assert (m["janus_rate"], m["face_recall"]) == (0.0, 1.0)
    faceless = world.render_classes([red_cube], views, markers=[])[0]
    m = world.evaluate(faceless, views, "a red cube")
    assert (m["janus_rate"], m["face_recall"]) == (0.0, 0.0)
    assert world.face_recall(faceless, views, red_cube) == 0.0
    four = world.render_classes([red_cube], views, markers=[(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0)])[0]
    assert (world.janus_rate(four, views, red_cube), world.face_recall(four, views, red_cube)) == (1.0, 1.0)
    # no view where the truth shows its face: nothing to recall
    back = world.world_views().select(torch.tensor([4]))  # azimuth 180
    assert world.face_recall(world.render_classes([red_cube], back)[0], back, red_cube) == 1.0
    m3 = world.evaluate(torch.ones(1, 32, 32, 3), back, "a red cube")
    assert m3["precision"] == 0.0 and m3["mode_id"] == -1


def test_metrics_2d_compare_with_any_view():
    """representation=image: one fixed camera; an image of any data view counts."""
    from src.cameras_orbit import FixedSampler

    world = ShapesWorld(resolution=32, **SMALL)
    views = FixedSampler(height=32, width=32, n_objects=2).eval_views()
    back = world.embed("a blue cube, back view").nonzero().squeeze(1)[:1]
    front = world.embed("a red sphere, front view").nonzero().squeeze(1)[:1]
    imgs = world.images()[torch.cat([back, front])]
    m = world.evaluate(imgs, views, "a blue cube")
    assert m["any_view"] == 1 and m["precision"] == 0.5
    assert m["mode_id"] in (world.prompt_classes("a blue cube")[0], world.prompt_classes("a red sphere")[0])


def test_csd_classifier_score_on_the_exact_prior_never_chooses_a_colour():
    """Why CSD reaches no cone on ShapesWorld (README, "What ShapesWorld shows"): on the exact
    prior its classifier score h = e(x_t; "a cone") - e(x_t; "") is, with pi the posterior mass of
    the cone images under the null prompt,

        h = (sigma alpha / v) (1 - pi) (xbar_other - xbar_cone)

    (eps = sigma (x_t - alpha xbar) / v; xbar under "" mixes the cone images' xbar and the rest's).
    So h vanishes once the noisy render is unambiguously a cone, whatever its colour: for a cone
    painted half red, half blue (no world colour) it is 0 in float64 from t = 400 down, where SDS pulls
    (e(x_t; "a cone") - eps) toward a coloured cone; at t = 950 it acts, on the shape."""
    from src.guidance.csd import classifier_score

    world = ShapesWorld(resolution=16, shapes=("sphere", "cone"), colors=("red", "blue"), n_azimuths=8,
                        n_elevations=2, elevation_range=(0.0, 70.0), smoothing=0.02, cache=False)
    cone = world.embed("a cone").double()
    null = world.embed("").double()
    at = (world.azimuth_deg == 45.0) & (world.elevation_deg == 0.0)
    red, blue = (world.data[at & (world.class_idx == world.prompt_classes(p)[0])] for p in ("a red cone", "a blue cone"))
    x0 = (0.5 * (red + blue)).double()  # (1, D): the cone's silhouette and shading, no world colour
    data = world.data.double()
    g = torch.Generator().manual_seed(0)
    for step in (50, 200, 400, 950):
        t = torch.full((4,), step)
        alpha, sigma = alpha_sigma(world.alphas_cumprod, t)
        eps = torch.randn((4, x0.shape[1]), generator=g, dtype=torch.float64)
        x_t = (alpha[:, None] * x0 + sigma[:, None] * eps).reshape(4, 3, 16, 16)
        h, e_c = classifier_score(world, x_t, t, cone.expand(4, -1), null.expand(4, -1))
        h, e_c = h.reshape(4, -1), e_c.reshape(4, -1)
        # the identity, from the posteriors over the data set
        v = alpha**2 * world.smoothing**2 + sigma**2
        logits = -((x_t.reshape(4, 1, -1) - alpha[:, None, None] * data) ** 2).sum(-1) / (2 * v[:, None])
        r_null = torch.softmax(logits + null.log()[None], dim=1)
        r_cone = torch.softmax(logits + cone.log()[None], dim=1)
        pi = r_null[:, cone > 0].sum(1)
        other = (r_null * (cone == 0)) @ data  # (1 - pi) xbar_other
        want = (sigma * alpha / v)[:, None] * (other - (1 - pi)[:, None] * (r_cone @ data))
        torch.testing.assert_close(h, want, rtol=1e-6, atol=1e-9)
        sds_pull = (e_c - eps).norm(dim=1)
        if step <= 400:  # the render is unambiguously a cone: no force toward either colour
            assert (h.norm(dim=1) < 1e-3 * sds_pull).all(), (step, h.norm(dim=1), sds_pull, 1 - pi)
        else:  # at high noise it may still be a sphere: h acts, on the shape
            assert (1 - pi > 1e-3).all() and (h.norm(dim=1) > 1e-3 * sds_pull).all(), (step, 1 - pi)
