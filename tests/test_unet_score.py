"""psi for pixel backbones: the tiny camera-conditioned UNet trained from scratch."""

from __future__ import annotations

import pytest
import torch

from src.backbones.base import Backbone
from src.cameras import ViewBatch
from src.diffusion import sd_alphas_cumprod
from src.representations.base import Representation
from src.scoremodels.unet import UNetScore


class Pixel(Backbone):
    space = "pixel"

    def __init__(self, resolution=32):
        super().__init__()
        self.resolution = resolution
        self.register_buffer("alphas_cumprod", sd_alphas_cumprod())


class Latent(Pixel):
    space = "latent"


REP = Representation()  # cam_dim 16: flattened camera-to-world


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny network; threads only add barrier waits on a busy CPU
    yield
    torch.set_num_threads(n)


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
