"""Exact properties of the estimators and their shared parts on the analytic backbones."""

import pytest
import torch

from src.backbones.mog import GaussianMixture
from src.cameras import IndexSampler, ViewBatch
from src.checks import ConfigError
from src.diffusion import alpha_sigma
from src.guidance.csd import CSD
from src.guidance.dsd import DSD
from src.guidance.esd import ESD
from src.guidance.fsd import FSD
from src.guidance.sds import SDS
from src.guidance.ssd import SSD
from src.guidance.vsd import VSD
from src.representations.toys import Particles
from src.scoremodels.mlp import MLPScore
from tests.helpers import make_guidance, pixel_mixture


@pytest.fixture
def mog():
    return GaussianMixture(means=[[-2, -2], [2, 2], [0, 0]], covs=[0.05, 0.05, 0.5],
                           tags=[["y"], ["y"], []], default_prompt="y")


def views_for(n):
    return IndexSampler(n).sample(0, torch.Generator().manual_seed(0))


def test_eps_is_exact_score(mog):
    """e = -sigma grad log p_t: compare with autograd of the closed-form log density."""
    x = torch.randn(16, 2, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 1000, (16,))
    emb = mog.embed("y").expand(16, -1)
    grad = torch.autograd.grad(mog.log_prob_t(x, t, emb).sum(), x)[0]
    _, sigma = alpha_sigma(mog.alphas_cumprod, t)
    assert torch.allclose(mog.predict_eps(x.detach(), t, emb), -sigma[:, None] * grad, atol=1e-10)


def test_cfg_is_one_batched_call_equal_to_separate_calls(mog):
    x = torch.randn(8, 2, dtype=torch.float64)
    t = torch.full((8,), 300)
    emb, null = mog.embed("y").expand(8, -1), mog.embed("").expand(8, -1)
    e_c, e_u = mog.predict_eps(x, t, emb), mog.predict_eps(x, t, null)
    assert torch.allclose(mog.eps(x, t, emb, null, 7.5), e_u + 7.5 * (e_c - e_u))
    assert torch.equal(mog.eps(x, t, emb, null, 1.0), e_c)


def test_unknown_prompt_lists_vocabulary(mog):
    with pytest.raises(ValueError, match=r"vocabulary.*'y'"):
        mog.embed("dragon")


def test_sds_mean_gradient_matches_closed_form():
    """One Gaussian target: E_eps[e_p(x_t) - eps] = sigma alpha M (x - mu), M = (alpha^2 S + sigma^2 I)^-1."""
    S = torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=torch.float64)
    mu = torch.tensor([0.5, -1.0], dtype=torch.float64)
    bb = GaussianMixture(means=[mu.tolist()], covs=[S.tolist()], tags=[["g"]], default_prompt="g")
    sds = make_guidance(SDS, bb, t=500, scale=1.0, weighting="uniform")
    N = 200_000
    x0 = torch.tensor([1.5, 0.5], dtype=torch.float64)
    x = x0.expand(N, 2).clone()
    z = torch.zeros(N, dtype=torch.long)
    G = sds(x, ViewBatch(index=z, view_idx=z, cam=torch.zeros(N, 1)), 0).grad.mean(0)
    alpha, sigma = (float(v) for v in alpha_sigma(bb.alphas_cumprod, torch.tensor([500])))
    M = torch.linalg.inv(alpha**2 * S + sigma**2 * torch.eye(2, dtype=torch.float64))
    exact = sigma * alpha * M @ (x0 - mu)
    assert (G - exact).norm() / exact.norm() < 0.01


def test_esd_lam0_is_vsd_exactly(mog):
    torch.manual_seed(3)
    rep = Particles(n_particles=8).double()
    views = views_for(8)
    outs = []
    for cls, kw in ((VSD, {}), (ESD, {"lam": 0.0})):
        torch.manual_seed(11)  # same psi init
        g = make_guidance(cls, mog, representation=rep, score_model=MLPScore, seed=2, **kw)
        x = rep.render(views).rgb
        outs.append(g(x, views, 5).grad)
    assert torch.equal(outs[0], outs[1])


def test_esd_interpolates_conditional_and_unconditional_psi(mog):
    rep = Particles(n_particles=4).double()
    views = views_for(4)
    x = rep.render(views).rgb
    torch.manual_seed(0)
    grads = {}
    for lam in (0.0, 0.3, 1.0):
        torch.manual_seed(11)
        g = make_guidance(ESD, mog, t=400, representation=rep, score_model=MLPScore, lam=lam)
        grads[lam] = g(x, views, 0).grad
    assert torch.allclose(grads[0.3], 0.7 * grads[0.0] + 0.3 * grads[1.0], atol=1e-12)


def test_ssd_disengaging_term_is_csd(mog):
    """SSD's h is CSD's classifier score: same seed and t -> the same G, bit for bit."""
    x = torch.randn(64, 2, dtype=torch.float64)
    views = views_for(64)
    for t in (100, 600):
        csd = make_guidance(CSD, mog, t=t, weighting="sds", seed=7)
        dis = make_guidance(SSD, mog, t=t, terms="disengaging", weighting="sds", seed=7)
        assert torch.equal(csd(x, views, 3).grad, dis(x, views, 3).grad)
    csd = make_guidance(CSD, mog, t=600, weighting="uniform")
    t, _, x_t = csd.perturb(x, 0)  # the same draw the estimator makes at step 0
    e_c, e_u = mog.eps_pair(x_t, t, mog.embed("y").expand(64, -1), mog.embed("").expand(64, -1))
    assert torch.equal(csd(x, views, 0).grad, e_c - e_u)  # G = h, the classifier score


def test_ssd_branches(mog):
    x = torch.randn(64, 2, dtype=torch.float64)
    views = views_for(64)
    hi = make_guidance(SSD, mog, t=600, M=200, weighting="uniform", scale=1.0)
    dis = make_guidance(SSD, mog, t=600, M=200, terms="disengaging", weighting="uniform", scale=1.0)
    assert torch.equal(hi(x, views, 0).grad, dis(x, views, 0).grad)  # t > M: E = h
    lo = make_guidance(SSD, mog, t=100, M=200, weighting="uniform", scale=1.0)
    dlo = make_guidance(SSD, mog, t=100, M=200, terms="disengaging", weighting="uniform", scale=1.0)
    E, h = lo(x, views, 0).grad, dlo(x, views, 0).grad
    assert torch.allclose(E.norm(dim=1), h.norm(dim=1))  # rescaled to ||h||
    assert not torch.allclose(E, h)


def test_fsd_noise_is_fixed_per_object_and_beta0_is_fresh(mog):
    views = views_for(4)
    x = torch.zeros(4, 2, dtype=torch.float64)
    f = make_guidance(FSD, mog, beta=1.0, seed=1)
    n0, n1 = f.camera_noise(x, views, 0), f.camera_noise(x, views, 1)
    assert torch.equal(n0, n1) and not torch.allclose(n0[0], n0[1])
    f0 = make_guidance(FSD, mog, beta=0.0, seed=1)
    assert not torch.allclose(f0.camera_noise(x, views, 0), f0.camera_noise(x, views, 1))


def test_dsd_cached_trajectory_equals_recomputed():
    bb = pixel_mixture((3, 4, 4))
    rep_n = 3
    rep = Particles(n_particles=rep_n, dim=48).double()
    views = views_for(rep_n)
    ts = [980, 930, 870, 800, 760, 700, 610, 540, 500, 420, 330, 250]
    grads = {}
    for cache in (True, False):
        g = make_guidance(DSD, bb, t=ts, representation=rep, cache=cache, seed=3, scale=2.0)
        x = rep.render(views).rgb.detach()
        grads[cache] = [g(x, views, k).grad for k in range(len(ts))]
        calls = len(g._states)
        if cache:
            assert calls <= 10  # grid states only, not one trajectory per step
    for a, b in zip(grads[True], grads[False]):
        assert torch.equal(a, b)


def test_dsd_delta_is_a_fraction_of_t_minus_t_min():
    """Official delta = U * delta_fraction * (t - t_min), the same U for the same (seed, step)."""
    bb = pixel_mixture((3, 4, 4))
    t_min = 0.32 * bb.num_timesteps
    largest = 0
    for step in range(20):
        gaps = {}
        for f in (0.1, 1.0):
            g = make_guidance(DSD, bb, seed=5, delta_fraction=f)
            g.schedule.t_min = 0.32
            gaps[f] = g.target_time(600, step) - 600  # t + gap stays below T - 1
            assert 0 <= gaps[f] <= f * (600 - t_min)
        assert abs(gaps[1.0] - 10 * gaps[0.1]) <= 10  # int() of each: within the rounding
        largest = max(largest, gaps[1.0])
    assert largest > 0.5 * (600 - t_min)  # U spans [0, 1]
    g = make_guidance(DSD, bb, seed=5)
    g.schedule.t_min = 0.32
    assert g.target_time(int(t_min), 0) == int(t_min)  # no gap at t_min


def test_guidance_rejects_out_of_range():
    base = {"scale": 7.5, "weighting": "sds"}
    with pytest.raises(ConfigError, match="guidance.scale=0.5 is invalid: must be >= 1"):
        SDS.validate_config({**base, "scale": 0.5}, "guidance")
    with pytest.raises(ConfigError, match=r"guidance.lam=1.5 is invalid: must be >= 0.0 and <= 1.0"):
        ESD.validate_config({**base, "lam": 1.5, "p_drop": 0.5}, "guidance")
    with pytest.raises(ConfigError, match="guidance.terms='both' is invalid: allowed: ssd, seeking, disengaging"):
        SSD.validate_config({**base, "terms": "both", "M": 200}, "guidance")
    with pytest.raises(ConfigError, match=r"guidance.scale=inf is invalid: must be finite"):
        SDS.validate_config({**base, "scale": float("inf")}, "guidance")


@pytest.mark.parametrize("psi_kind", ["mlp", "analytic"])
@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])  # lam = 0: VSD's [c]; 0.5: [c, null]; 1: [null]
def test_prior_and_psi_call_equals_separate_calls_on_an_analytic_prior(mog, psi_kind, lam):
    """``Backbone.eps_with_psi`` / ``eps_pair_with_psi``, the one call of VSD, ESD and SIM: on a
    prior without a fast path, the separate calls themselves (psi's cameras batched where its null
    camera is zeros; the closed form's null is its marginal, never the code c = 0)."""
    from src.representations.toys import Affine
    from src.scoremodels.analytic import AffineGaussianScore

    B = 8
    torch.manual_seed(4)
    rep, score_model = ((Particles(n_particles=B).double(), MLPScore) if psi_kind == "mlp"
                        else (Affine(dim=2).double(), AffineGaussianScore))
    views = views_for(B)
    if psi_kind == "analytic":
        views = ViewBatch(index=views.index, view_idx=views.view_idx,
                          cam=torch.randn(B, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    g = make_guidance(ESD, mog, representation=rep, score_model=score_model, lam=lam, scale=7.5)
    psi, cams = g.psi, g.psi_cams(views)
    gen = torch.Generator().manual_seed(2)
    x_t = torch.randn(B, 2, generator=gen, dtype=torch.float64)
    t = torch.randint(0, 1000, (B,), generator=gen)
    emb, null = g.text(views)
    psi_emb = g.psi_text(B)

    e, e_psi = mog.eps_with_psi(x_t, t, emb, null, 7.5, psi, psi_emb, cams)
    assert torch.equal(e, mog.eps(x_t, t, emb, null, 7.5))
    separate = [psi.eps(x_t, t, c, psi_emb) for c in cams]
    for got, ref in zip(e_psi, separate):
        if len(cams) == 1:
            assert torch.equal(got, ref)
        else:  # one call of batch 2B: the MLP's float32 round-off (a few 1e-7 relative)
            assert (got - ref).abs().max() <= 1e-6 * ref.abs().max()
    if psi_kind == "analytic" and None in cams:  # the marginal q_t, not the code c = 0
        assert not torch.allclose(e_psi[cams.index(None)], psi.eps(x_t, t, torch.zeros(B, 2, dtype=torch.float64)))

    # SIM: the prior's pair and psi, differentiated through x_t
    w = torch.randn(3, B, 2, generator=gen, dtype=torch.float64)
    cam = cams[0]

    def input_grad(pair_and_psi):
        z = x_t.clone().requires_grad_(True)
        e_c, e_u, e_q = pair_and_psi(z)
        return torch.autograd.grad((w[0] * e_c + w[1] * e_u + w[2] * e_q).sum(), z)[0], (e_c, e_u, e_q)

    g_one, one = input_grad(lambda z: (lambda c, u, q: (c, u, q[0]))(
        *mog.eps_pair_with_psi(z, t, emb, null, psi, psi_emb, [cam])))
    # psi's call first, as SIM's reference has always made them: autograd sums x_t's gradient in
    # the order of the calls, so this order keeps every SIM run bit for bit what it was
    g_sep, sep = input_grad(lambda z: (lambda q, pair: (*pair, q))(psi.eps(z, t, cam, psi_emb),
                                                                   mog.eps_pair(z, t, emb, null)))
    assert all(torch.equal(a, b) for a, b in zip(one, sep))
    assert torch.equal(g_one, g_sep)
