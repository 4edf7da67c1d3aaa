"""SIM / Dive3D's estimator on the affine-Gaussian toy, where the score divergence D is
closed form (dive3d_sim App. A; METHODS.md "SIM"): its Monte-Carlo mean must equal the
gradient of D taken with the sampling distribution held at the current parameters."""

import pytest
import torch

from src.backbones.mog import GaussianMixture
from src.cameras import ViewBatch
from src.checks import ConfigError
from src.clock import run_length
from src.diffusion import alpha_sigma, bcast, weighting, x0_to_eps
from src.guidance.sim import SIM
from src.representations.toys import Affine
from src.scoremodels.analytic import AffineGaussianScore
from tests.helpers import make_guidance

MU = [1.0, -0.5]
SIGMA = [[1.0, 0.6], [0.6, 0.8]]
N = 400_000
T_FIXED = 400


def setup(distance="l2", grad_through="inputs", seed=0, weighting="sds"):
    torch.manual_seed(seed)
    bb = GaussianMixture(means=[MU], covs=[SIGMA], tags=[["target"]], default_prompt="target")
    rep = Affine(dim=2).double()
    with torch.no_grad():  # a generic state: not at the optimum, A not symmetric
        rep.b.copy_(torch.tensor([0.3, 0.2]))
        rep.A.copy_(torch.tensor([[0.7, 0.2], [-0.1, 0.5]]))
    sim = make_guidance(SIM, bb, t=T_FIXED, representation=rep, scale=1.0, distance=distance,
                        grad_through=grad_through, weighting=weighting,
                        score_model=AffineGaussianScore, seed=seed)
    return bb, rep, sim


def estimator_grad(rep, sim, seed=0):
    """Mean over N samples of the parameter gradient the trainer would apply."""
    g = torch.Generator().manual_seed(seed + 100)
    c = torch.randn(N, 2, generator=g, dtype=torch.float64)
    z = torch.zeros(N, dtype=torch.long)
    views = ViewBatch(index=z, view_idx=z, cam=c)
    x = rep.render(views).rgb
    G = sim(x, views, step=0).grad
    rep.zero_grad()
    (G * x).sum(1).mean().backward()
    return torch.cat([rep.b.grad.flatten(), rep.A.grad.flatten()])


def scores(rep_b, rep_A, x_t, alpha, sigma):
    P = torch.linalg.inv(alpha**2 * torch.tensor(SIGMA, dtype=torch.float64) + sigma**2 * torch.eye(2, dtype=torch.float64))
    Q = torch.linalg.inv(alpha**2 * rep_A @ rep_A.T + sigma**2 * torch.eye(2, dtype=torch.float64))
    s_p = (alpha * torch.tensor(MU, dtype=torch.float64) - x_t) @ P.T
    s_q = (alpha * rep_b - x_t) @ Q.T
    return s_p, s_q


# w(t) by hand: sds = sigma^2; sds_alpha = sigma^2 / alpha (DreamFusion's dx_t/dx = alpha_t taken
# back out, for SIM's autograd through x_t; src/diffusion.py)
@pytest.mark.parametrize("name", ["sds", "sds_alpha"])
def test_sim_l2_matches_closed_form_gradient(name):
    _, rep, sim = setup("l2", weighting=name)
    est = estimator_grad(rep, sim)
    t = torch.tensor([T_FIXED])
    alpha, sigma = (float(v) for v in alpha_sigma(sim.abar, t))
    w = sigma**2 / (alpha if name == "sds_alpha" else 1.0)
    assert w == pytest.approx(float(weighting(name, torch.tensor(alpha), torch.tensor(sigma))), rel=1e-6)
    b = rep.b.detach().clone().requires_grad_(True)
    A = rep.A.detach().clone().requires_grad_(True)
    # D(theta) = E_{x ~ N(m0, C0)} ||K x + k||^2 = ||K m0 + k||^2 + tr(K C0 K^T), (m0, C0) held fixed
    eye = torch.eye(2, dtype=torch.float64)
    P = torch.linalg.inv(alpha**2 * torch.tensor(SIGMA, dtype=torch.float64) + sigma**2 * eye)
    Q = torch.linalg.inv(alpha**2 * A @ A.T + sigma**2 * eye)
    K = Q - P
    k = alpha * (P @ torch.tensor(MU, dtype=torch.float64) - Q @ b)
    m0 = alpha * rep.b.detach()
    C0 = alpha**2 * rep.A.detach() @ rep.A.detach().T + sigma**2 * eye
    D = ((K @ m0 + k) ** 2).sum() + torch.trace(K @ C0 @ K.T)
    exact = w * torch.cat([v.flatten() for v in torch.autograd.grad(D, [b, A])])
    rel = (est - exact).norm() / exact.norm()
    assert rel < 0.05, (est, exact, rel)


def test_sim_pseudo_huber_matches_monte_carlo_autograd():
    _, rep, sim = setup("pseudo_huber")
    est = estimator_grad(rep, sim)
    t = torch.tensor([T_FIXED])
    alpha, sigma = (float(v) for v in alpha_sigma(sim.abar, t))
    w = float(weighting("sds", torch.tensor(alpha), torch.tensor(sigma)))
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():  # x_t ~ q_t at the current parameters, held fixed
        c = torch.randn(N, 2, generator=g, dtype=torch.float64)
        e = torch.randn(N, 2, generator=g, dtype=torch.float64)
        x_t = alpha * (rep.b + c @ rep.A.T) + sigma * e
    b = rep.b.detach().clone().requires_grad_(True)
    A = rep.A.detach().clone().requires_grad_(True)
    s_p, s_q = scores(b, A, x_t, alpha, sigma)
    c2 = sim.huber_c**2
    D = (((s_p - s_q) ** 2).sum(1) + c2).sqrt().sub(sim.huber_c).mean()
    mc = w * torch.cat([v.flatten() for v in torch.autograd.grad(D, [b, A])])
    rel = (est - mc).norm() / mc.norm()
    assert rel < 0.05, (est, mc, rel)


def test_sim_residual_only_is_biased_on_A():
    """The cheaper path (y_t detached) gets grad_b but not grad_A: why it is labelled biased."""
    _, rep, sim = setup("l2", "inputs")
    full = estimator_grad(rep, sim)
    _, rep2, cheap = setup("l2", "residual_only")
    part = estimator_grad(rep2, cheap)
    assert (part[:2] - full[:2]).norm() / full[:2].norm() < 0.05
    assert (part[2:] - full[2:]).norm() / full[2:].norm() > 0.2


def test_vsd_after_switches_to_the_vsd_step_with_the_same_psi():
    """The official code's second phase: before vsd_after x max_steps the SIM step, after it
    VSD's G with SIM's camera-unconditional psi, i.e. ESD at lam = 1, bit for bit."""
    from src.guidance.esd import ESD
    from src.representations.toys import Particles
    from src.scoremodels.mlp import MLPScore

    bb = GaussianMixture(means=[[-2, -2], [2, 2]], covs=[0.05, 0.05], tags=[["y"], ["y"]], default_prompt="y")
    rep = Particles(n_particles=8).double()
    views = ViewBatch(index=torch.arange(8), view_idx=torch.zeros(8, dtype=torch.long), cam=torch.zeros(8, 0))
    x = rep.render(views).rgb

    def grad(cls, step, **kw):
        torch.manual_seed(11)  # the same psi
        g = make_guidance(cls, bb, representation=rep, score_model=MLPScore, scale=1.0, seed=3, **kw)
        return g(x, views, step).grad

    switch = 0.5 * 1000  # a run of 1000 steps
    for step in (0, int(switch) - 1):
        assert torch.equal(grad(SIM, step, vsd_after=0.5, run_length=run_length(1000)), grad(SIM, step))
        assert not torch.equal(grad(SIM, step, vsd_after=0.5, run_length=run_length(1000)), grad(ESD, step, lam=1.0))
    for step in (int(switch), 999):
        assert torch.equal(grad(SIM, step, vsd_after=0.5, run_length=run_length(1000)), grad(ESD, step, lam=1.0))


def test_sim_rejects_bad_options():
    base = {"scale": 7.5, "weighting": "sds", "p_drop": 1.0}
    with pytest.raises(ConfigError, match="guidance.distance='l1' is invalid: allowed: l2, pseudo_huber"):
        SIM.validate_config({**base, "distance": "l1", "grad_through": "inputs"}, "guidance")
    with pytest.raises(ConfigError, match=r"guidance.gamma: unknown key.*it takes: .*scale"):
        SIM.validate_config({**base, "gamma": 6.5, "distance": "l2", "grad_through": "inputs"}, "guidance")
    with pytest.raises(ConfigError, match=r"guidance.vsd_after=1.5 is invalid: must be >= 0.0 and <= 1.0"):
        SIM.validate_config({**base, "distance": "l2", "grad_through": "inputs", "huber_c": 1.0, "reward_weight": 0.0, "vsd_after": 1.5}, "guidance")
    with pytest.raises(ConfigError, match=r"guidance.psi_camera='sometimes' is invalid: allowed: auto, True, False"):
        SIM.validate_config({**base, "distance": "l2", "grad_through": "inputs", "psi_camera": "sometimes"}, "guidance")


@pytest.mark.parametrize("overrides, camera, p_drop", [
    (["backbone=mog2d", "representation=particles"], False, 1.0),   # the "camera" is the particle index
    (["experiment=esd_toy"], False, 1.0),                           # the "camera" is the generator's code
    (["representation=nerf"], True, 0.1),                           # a viewpoint: as Dive3D's LoRA psi
    (["representation=nerf", "guidance.psi_camera=false"], False, 1.0),
])
def test_psi_camera_auto_follows_whether_the_camera_is_a_viewpoint(overrides, camera, p_drop):
    from src.api import compose
    from src.build import build_components

    c = build_components(compose(["guidance=sim", *overrides]))
    assert c.guidance.psi_camera is camera and c.guidance.p_drop == p_drop


def test_reward_term_pulls_toward_the_rewarded_mode(tmp_path):
    """Dive3D's lam_r D(grad r, s_q): with a reward centred on one mode, more particles end
    there than without it (same seed, same everything else)."""
    from src.api import compose, train

    base = ["experiment=mog_diversity", "guidance=sim", "trainer.max_steps=300", "trainer.export=false",
            "representation.init_point=[0.0,0.0]"]
    near = {}
    for weight in (0.0, 2.0):
        extra = ["reward=point", f"guidance.reward_weight={weight}"]
        _, tr = train(compose(base + extra), tmp_path / str(weight))
        x = tr.c.representation.x.detach()
        near[weight] = float(((x - torch.tensor([2.0, 2.0], dtype=x.dtype)).norm(dim=1) < 1.0).float().mean())
    assert near[2.0] > near[0.0] + 0.2, near


def test_profile_jacobian_error_against_the_point_mass():
    """src/studies/diagnostics/sim_weighting_profile.py's "psi Jacobian err": 0 for the renders' own score
    e = (x_t - alpha x) / sigma, and |1 - sigma| for e = x_t (Jacobian I instead of I / sigma)."""
    from types import SimpleNamespace

    from src.diffusion import sd_alphas_cumprod
    from src.studies.diagnostics.sim_weighting_profile import jacobian_error

    abar, x, t = sd_alphas_cumprod(), torch.randn(1, 3, 4, 4), torch.tensor([300])
    _, sigma = alpha_sigma(abar, t)

    def psi(fn):
        return SimpleNamespace(abar=abar, psi_cam=lambda views: None, psi_eps=lambda z, t, cam: fn(z))

    exact = psi(lambda z: x0_to_eps(z, x, abar, t))
    assert jacobian_error(exact, x, t, None, torch.Generator().manual_seed(0)) < 1e-6
    wrong = psi(lambda z: z.clone())
    assert jacobian_error(wrong, x, t, None, torch.Generator().manual_seed(0)) == pytest.approx(1 - float(sigma), rel=1e-5)


@pytest.mark.parametrize("distance", ["l2", "pseudo_huber"])
def test_sim_with_the_ideal_camera_psi_is_sds_reweighted(distance):
    """psi = the exact score of a deterministic render (a point mass at x: the ideal camera-
    conditioned psi of one 3D object seen from one camera). Then s_q(x_t) - grad log q_t(x_t | x)
    = 0, the term through d'' vanishes, and only psi's input Jacobian -I / sigma^2 carries the
    step: G = -w alpha / sigma^2 d'(y), y = (eps - e_p) / sigma, i.e. SDS's direction e_p - eps
    weighted 2 alpha / sigma^3 (l2) or alpha / sigma^3 / sqrt(|y|^2 + c^2) (pseudo-Huber). So
    on a 3D object SIM's signal is what SDS's is, and it reaches x only through psi's Jacobian."""
    from src.representations.toys import Particles
    from src.scoremodels.mlp import MLPScore

    bb = GaussianMixture(means=[[-2, -2], [2, 2]], covs=[0.05, 0.05], tags=[["y"], ["y"]], default_prompt="y")
    rep = Particles(n_particles=8).double()
    with torch.no_grad():
        rep.x.copy_(torch.randn(8, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64))
    views = ViewBatch(index=torch.arange(8), view_idx=torch.zeros(8, dtype=torch.long), cam=torch.zeros(8, 0))
    x = rep.render(views).rgb.detach()
    sim = make_guidance(SIM, bb, t=[50, 300, 700, 950], representation=rep, score_model=MLPScore, scale=1.0,
                        seed=3, distance=distance, huber_c=0.5)

    def point_mass_eps(z, t, cam, emb=None):  # e = (x_t - alpha x) / sigma for the render x itself
        return x0_to_eps(z, x, sim.abar, t)

    drawn = {}

    def perturb(x_, step):
        drawn["t"], drawn["eps"], x_t = out = type(sim).perturb(sim, x_, step)
        drawn["x_t"] = x_t.detach()
        return out

    sim.psi.eps, sim.perturb = point_mass_eps, perturb
    for step in range(4):  # one t of the grid per step
        G = sim(x, views, step).grad
        t, eps = drawn["t"], drawn["eps"]
        a, s = (bcast(v, x) for v in alpha_sigma(sim.abar, t))
        e_p = bb.eps_pair(drawn["x_t"], t, *sim.text(views))[0]
        y = (eps - e_p) / s
        weight = 2.0 if distance == "l2" else 1.0 / bcast(((y * y).sum(1) + 0.5**2).sqrt(), y)
        expected = sim.w(t, x) * weight * a / s**3 * (e_p - eps)
        assert torch.allclose(G, expected, rtol=1e-9, atol=1e-12), (step, (G - expected).abs().max())
        if distance == "l2":  # weighting=sim_sds: SDS's own step, sigma^2 (e_p - eps)
            sim.weighting = "sim_sds"
            G = sim(x, views, step).grad
            assert torch.allclose(G, bcast(weighting("sds", *alpha_sigma(sim.abar, t)), x) * (e_p - eps),
                                  rtol=1e-9, atol=1e-12)
            sim.weighting = "sds"
