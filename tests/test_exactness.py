"""FSD (Proposition 1) and DSD* (paper App. A) reproduce DDIM exactly on a pixel-space
analytic target, in float64 (METHODS.md "Exactness")."""

import torch
from diffusers import DDIMScheduler

from src.cameras import ViewBatch
from src.diffusion import alpha_sigma, ddim_step
from src.guidance.dsd import DSD
from src.guidance.fsd import FSD
from src.guidance.noise import fixed_per_object
from tests.helpers import make_guidance, pixel_mixture

SHAPE = (3, 8, 8)
GRID = list(range(999, 0, -100))  # DDIM timesteps 999, 899, ..., 99
TOL = 1e-4


def one_view():
    z = torch.zeros(1, dtype=torch.long)
    return ViewBatch(index=z, view_idx=z, cam=torch.zeros(1, 1))


def ddim_sample(backbone, x_T, scale, cond, grid):
    """Reference DDIM (eta = 0) over ``grid``, last step to the clean sample (abar = 1)."""
    abar = backbone.alphas_cumprod
    emb, null = cond.select(torch.zeros(1, dtype=torch.long)), cond.null(1)
    x = x_T
    for i, t in enumerate(grid):
        tt = torch.tensor([t])
        e = backbone.eps(x, tt, emb, null, scale)
        abar_s = abar[grid[i + 1]] if i + 1 < len(grid) else torch.tensor(1.0, dtype=torch.float64)
        x = ddim_step(x, e, abar[tt], abar_s.reshape(1))
    return x


def test_ddim_step_matches_diffusers():
    bb = pixel_mixture(SHAPE)
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          clip_sample=False, set_alpha_to_one=True, steps_offset=0)
    sched.set_timesteps(10)
    assert sched.timesteps.tolist() == list(range(900, -1, -100))
    assert torch.allclose(sched.alphas_cumprod.double(), bb.alphas_cumprod, atol=1e-6)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, *SHAPE, generator=g, dtype=torch.float64)
    e = torch.randn(1, *SHAPE, generator=g, dtype=torch.float64)
    abar = sched.alphas_cumprod.double()
    ours = ddim_step(x, e, abar[[900]], abar[[800]])
    theirs = sched.step(e.float(), 900, x.float()).prev_sample
    assert (ours.float() - theirs).abs().max() < 1e-5


def test_fsd_equals_ddim():
    """SGD with w = 1, lr_k = sigma_k/alpha_k - sigma_{k+1}/alpha_{k+1}, beta = 1 (Prop. 1)."""
    bb = pixel_mixture(SHAPE)
    scale = 3.0
    fsd = make_guidance(FSD, bb, t=GRID, beta=1.0, scale=scale, weighting="uniform", seed=4)
    views = one_view()
    g = torch.Generator().manual_seed(2)
    x = (torch.rand(1, *SHAPE, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    x_init = x.detach().clone()
    eps = fixed_per_object(x_init.shape[1:], views.index, 4, x_init)
    abar = bb.alphas_cumprod
    rho = [float(alpha_sigma(abar, torch.tensor([t]))[1] / alpha_sigma(abar, torch.tensor([t]))[0]) for t in GRID] + [0.0]
    opt = torch.optim.SGD([x], lr=1.0)
    for k in range(len(GRID)):
        out = fsd(x, views, k)
        for group in opt.param_groups:
            group["lr"] = rho[k] - rho[k + 1]
        opt.zero_grad()
        (0.5 * ((x - (x - out.grad).detach()) ** 2).sum()).backward()
        opt.step()
    a_T, s_T = alpha_sigma(abar, torch.tensor([GRID[0]]))
    x_T = a_T * x_init + s_T * eps
    ref = ddim_sample(bb, x_T, scale, fsd.cond, GRID)
    assert (x.detach() - ref).abs().max() < TOL
    assert (x_init - ref).abs().max() > 0.1  # the optimization really moved the image


def test_dsd_star_equals_ddim():
    """delta = previous and the DDIM grid as schedule, SGD with lr_k = sigma_k / alpha_k."""
    bb = pixel_mixture(SHAPE)
    scale = 2.0
    dsd = make_guidance(DSD, bb, t=GRID, scale=scale, scale_td=scale, n_ddim=len(GRID),
                        delta="previous", weighting="uniform", seed=5)
    views = one_view()
    abar = bb.alphas_cumprod
    eps_star = fixed_per_object(SHAPE, views.index, 5, torch.zeros((), dtype=torch.float64))
    emb, null = dsd.cond.select(views.view_idx), dsd.cond.null(1)
    # DSD* starts from the x0 prediction at T, where the DDIM trajectory starts
    tT = torch.tensor([GRID[0]])
    a, s = alpha_sigma(abar, tT)
    x = ((eps_star - s * bb.eps(eps_star, tT, emb, null, scale)) / a).requires_grad_(True)
    opt = torch.optim.SGD([x], lr=1.0)
    for k, t in enumerate(GRID):
        out = dsd(x, views, k)
        a, s = alpha_sigma(abar, torch.tensor([t]))
        for group in opt.param_groups:
            group["lr"] = float(s / a)
        opt.zero_grad()
        (0.5 * ((x - (x - out.grad).detach()) ** 2).sum()).backward()
        opt.step()
    ref = ddim_sample(bb, eps_star, scale, dsd.cond, GRID)
    assert (x.detach() - ref).abs().max() < TOL
