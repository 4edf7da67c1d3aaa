"""psi for pixel backbones: the tiny camera-conditioned UNet trained from scratch."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from src.backbones.base import Backbone
from src.cameras import ViewBatch
from src.checks import ConfigError
from src.diffusion import sd_alphas_cumprod
from src.representations.base import Representation
from src.scoremodels.lora import LoRAScore
from src.scoremodels.unet import UNetScore
from tests.helpers import one_thread  # noqa: F401  (autouse fixture)


class Pixel(Backbone):
    space = "pixel"

    def __init__(self, resolution=32):
        super().__init__()
        self.resolution = resolution
        self.register_buffer("alphas_cumprod", sd_alphas_cumprod())


class Latent(Pixel):
    space = "latent"


REP = Representation()  # cam_dim 16: flattened camera-to-world




def _views(B: int, seed: int = 0) -> ViewBatch:
    g = torch.Generator().manual_seed(seed)
    zeros = torch.zeros(B, dtype=torch.long)
    return ViewBatch(index=zeros, view_idx=zeros, cam=torch.randn(B, 16, generator=g))


def test_shapes_and_camera():
    torch.manual_seed(0)
    psi = UNetScore(Pixel(32), REP, from_prior=False)  # the network alone
    with torch.no_grad():
        psi.camera[2].weight.normal_()
    x = torch.randn(2, 3, 32, 32)
    t = torch.tensor([10, 900])
    cam = _views(2).cam
    e = psi.eps(x, t, cam)
    assert e.shape == x.shape
    # the null camera is the zero vector through the camera MLP
    torch.testing.assert_close(psi.eps(x, t, None), psi.eps(x, t, torch.zeros_like(cam)))
    assert (psi.eps(x, t, None) - e).abs().max() > 0


def test_small_and_fit_learns():
    torch.manual_seed(0)
    psi = UNetScore(Pixel(32), REP, from_prior=False)
    n_params = sum(p.numel() for p in psi.trainable_parameters())
    assert n_params < 1_000_000
    x, views = torch.rand(1, 3, 32, 32) * 2 - 1, _views(1)
    g = torch.Generator().manual_seed(0)
    psi.fit_step(x, views, g)  # creates the optimizer
    with torch.no_grad():
        assert psi.eps(x, torch.tensor([500]), views.cam).shape == x.shape
    # a fixed image: its DSM loss (same t and noise draws before and after) falls
    xb, vb = x.expand(4, -1, -1, -1), _views(4)

    def held_out() -> float:
        with torch.no_grad():
            return sum(float(psi.dsm_loss(xb, vb, torch.Generator().manual_seed(100 + s))) for s in range(4))

    before = held_out()
    for s in range(15):
        psi.fit_step(xb, vb, torch.Generator().manual_seed(s))
    assert held_out() < before


def test_built_for_the_backbone():
    psi = UNetScore(Pixel(16), REP, lr=2e-3, from_prior=False)
    assert psi.lr == 2e-3 and psi.net.config.sample_size == 16 and psi.net.config.in_channels == 3
    with pytest.raises(ValueError, match="score_model=lora"):
        UNetScore(Latent(), REP)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_prediction_is_converted_to_epsilon(prediction):
    """A network that outputs the exact eps / x0 / v of x_t = alpha x0 + sigma eps gives back eps."""
    psi = UNetScore(Pixel(8), REP, prediction=prediction)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 3, 8, 8, generator=g, dtype=torch.float64), torch.randn(3, 3, 8, 8, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 400, 999])
    abar = psi.alphas_cumprod.double()[t].view(-1, 1, 1, 1)
    alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
    x_t = alpha * x0 + sigma * eps
    out = {"eps": eps, "x0": x0, "v": alpha * eps - sigma * x0}[prediction]
    torch.testing.assert_close(psi.to_eps(out, x_t, t), eps, rtol=1e-9, atol=1e-9)


def test_x0_prediction_holds_the_point_mass_jacobian():
    """For the renders of one camera (a point mass at x0) the score's epsilon is
    (x_t - alpha x0) / sigma, input Jacobian I / sigma: an x0 network that outputs x0 whatever
    x_t holds it exactly; an eps network would have to learn it."""
    psi = UNetScore(Pixel(8), REP, prediction="x0")
    x0, t = torch.randn(1, 3, 8, 8), torch.tensor([300])
    sigma = float((1 - psi.alphas_cumprod[300]).sqrt())
    v = torch.randn_like(x0)
    _, jv = torch.func.jvp(lambda z: psi.to_eps(x0, z, t), (torch.randn_like(x0),), (v,))
    torch.testing.assert_close(jv, v / sigma)


def test_prediction_errors_name_the_key():
    with pytest.raises(ValueError, match="prediction='v0'; valid: eps, x0, v"):
        UNetScore(Pixel(8), REP, prediction="v0")
    with pytest.raises(ValueError, match="needs from_prior=false"):
        UNetScore(Pixel(8), REP, prediction="x0", from_prior=True)


def test_eps_jvp_is_psi_input_jacobian():
    """eps_jvp's J v (double backward) against central differences, float64."""
    torch.manual_seed(0)
    psi = UNetScore(Pixel(8), REP).double()
    g = torch.Generator().manual_seed(1)
    x_t, v = (torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64) for _ in range(2))
    t, cam = torch.tensor([30, 700]), _views(2).cam.double()
    out, jv = psi.eps_jvp(x_t, t, cam, None, v)
    h = 1e-6
    with torch.no_grad():
        fd = (psi.eps(x_t + h * v, t, cam) - psi.eps(x_t - h * v, t, cam)) / (2 * h)
        torch.testing.assert_close(out, psi.eps(x_t, t, cam))
    torch.testing.assert_close(jv, fd, rtol=1e-6, atol=1e-8)
    assert jv.requires_grad  # differentiable in psi's parameters: the loss trains through it


@pytest.mark.parametrize("t", [100, 500, 900])
def test_second_order_dsm_is_minimized_by_the_true_jacobian(t):
    """Gaussian data x0 ~ N(mu, s^2 I): E[eps | x_t] = sigma / (alpha^2 s^2 + sigma^2) (x_t - alpha mu),
    Jacobian a I with a = sigma / (alpha^2 s^2 + sigma^2). Over J = a I, the Monte-Carlo mean of
    jacobian_loss (r from the exact e) is minimized at that a; without the covariance term it would
    be 1 / sigma (the point mass's)."""
    psi = UNetScore(Pixel(8), REP)
    d, n, s = 8, 400_000, 3.0
    g = torch.Generator().manual_seed(0)
    x0, eps, v = (torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(3))
    x0 = 0.3 + s * x0
    abar = float(psi.alphas_cumprod[t])
    alpha, sigma = abar ** 0.5, (1 - abar) ** 0.5
    x_t = alpha * x0 + sigma * eps
    exact = sigma / (alpha ** 2 * s ** 2 + sigma ** 2)
    r = eps - exact * (x_t - alpha * 0.3)
    tt = torch.full((n,), t)

    def loss(a: float) -> float:
        return float(psi.jacobian_loss(a * v, v, r, tt))

    # the loss is quadratic in a: its minimizer from three values
    l0, l1, l2 = loss(0.0), loss(1.0), loss(2.0)
    a_star = (3 * l0 - 4 * l1 + l2) / (2 * (l0 - 2 * l1 + l2))
    assert abs(a_star * sigma - exact * sigma) < 0.01, (a_star, exact)
    assert abs(1.0 - exact * sigma) > 0.1  # the covariance term matters at every t here


def test_point_mass_jacobian_term_fits_the_point_mass_jacobian():
    """One fixed image (the renders of one camera): the ideal psi's Jacobian is I / sigma_t.
    Fitted with the point-mass Jacobian term, psi's J v ends closer to v / sigma_t than fitted
    without it (same draws; 300 steps: relative error 0.12 against 0.17)."""
    x, views = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1, _views(4)
    xb = x.expand(4, -1, -1, -1)
    errs = {}
    for w in (0.0, 1.0):
        torch.manual_seed(0)
        psi = UNetScore(Pixel(8), REP, lr=2e-3, jacobian_weight=w, jacobian_target="point_mass")
        for s in range(300):
            psi.fit_step(xb, views, torch.Generator().manual_seed(s))
        g = torch.Generator().manual_seed(99)
        t = torch.tensor([100, 300, 600, 900])
        sigma = (1 - psi.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
        x_t = psi.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1) * xb + sigma * torch.randn(xb.shape, generator=g)
        v = torch.randn(xb.shape, generator=g)
        _, jv = psi.eps_jvp(x_t, t, views.cam, None, v)
        errs[w] = float((sigma * jv - v).norm() / v.norm())
    assert errs[1.0] < 0.8 * errs[0.0], errs


def test_jacobian_keys_are_checked():
    with pytest.raises(ValueError, match="jacobian_weight=-1.0; valid: >= 0"):
        UNetScore(Pixel(8), REP, jacobian_weight=-1.0)
    with pytest.raises(ValueError, match="jacobian_target='tweedie'; valid: second_order, point_mass"):
        UNetScore(Pixel(8), REP, jacobian_target="tweedie")
    with pytest.raises(ConfigError, match="score_model.jacobian_weight=1.0 is invalid: 0 for score_model=lora"):
        LoRAScore.check_config(OmegaConf.create({"rank": 4, "jacobian_weight": 1.0}), "score_model")
