"""psi starts as the prior (DESIGN.md "Interfaces"): e_psi = e(x_t; y) + a correction that is zero
at step 0, on every analytic prior (``from_prior: true``), as a LoRA on SD's UNet is (tests/test_sd.py)."""

import pytest
import torch

from src import rng
from src.api import compose
from src.build import build_components
from src.cameras import ViewBatch
from src.diffusion import alpha_sigma


@pytest.mark.parametrize("overrides", [
    ["guidance=vsd", "score_model.from_prior=true"],  # ShapesWorld, NeRF: prior + UNet correction
    ["guidance=esd", "backbone=mog2d", "representation=particles", "score_model.from_prior=true"],  # + MLP
])
def test_psi_equals_the_prior_at_step_0_and_then_learns(overrides):
    c = build_components(compose(overrides))
    psi, bb, g = c.guidance.psi, c.backbone, c.guidance
    B = 4
    gen = rng.generator(0, rng.Stream.EVAL)
    x = torch.randn(B, *bb.x_shape(), generator=gen)
    t = torch.tensor([20, 300, 600, 950])
    cam = torch.randn(B, c.representation.cam_dim, generator=gen)
    emb = g.psi_emb.unsqueeze(0).expand(B, *g.psi_emb.shape)
    prior = bb.predict_eps(x, t, emb)
    assert torch.equal(psi.eps(x, t, cam, emb), prior)  # exactly, whatever the camera
    assert torch.equal(psi.eps(x, t, None, emb), prior)
    views = ViewBatch(index=torch.zeros(B, dtype=torch.long), view_idx=torch.zeros(B, dtype=torch.long), cam=cam)
    for step in range(3):  # a few DSM steps on renders x move the correction away from zero
        psi.fit_step(x, views, rng.generator(0, rng.Stream.PSI, step), emb, p_drop=0.0)
    with torch.no_grad():
        assert (psi.eps(x, t, cam, emb) - prior).abs().max() > 0


def test_psi_refuses_a_prior_or_representation_it_cannot_serve():
    """psi imports neither (tests/test_architecture.py): it asks what its caller hands it. The
    closed form needs renders x = b + A c (``Representation.gaussian``); LoRA a UNet to adapt
    (``LoRAHost``)."""
    from src.backbones.mog import GaussianMixture
    from src.representations.toys import Affine, Particles
    from src.scoremodels.analytic import AffineGaussianScore
    from src.scoremodels.lora import LoRAScore

    bb = GaussianMixture(means=[[0.0, 0.0]], covs=[1.0], tags=[["y"]], default_prompt="y")
    with pytest.raises(ValueError, match=r"closed form of representation=affine \(x = b \+ A c\), not of Particles"):
        AffineGaussianScore(bb, Particles(n_particles=4))
    rep = Affine(dim=2)
    psi = AffineGaussianScore(bb, rep)
    with torch.no_grad():  # psi reads the representation's current (b, A): x_t at its render's mean
        rep.b.copy_(torch.tensor([1.0, -2.0]))  # scores 0 only under the new b
    t, c = torch.tensor([300]), torch.tensor([[0.5, 0.25]])
    alpha, _ = alpha_sigma(bb.alphas_cumprod, t)
    x_t = alpha.float()[:, None] * rep.render(ViewBatch(index=t * 0, view_idx=t * 0, cam=c)).rgb.detach()
    assert torch.allclose(psi.eps(x_t, t, c), torch.zeros(1, 2), atol=1e-6)
    with pytest.raises(ValueError, match="needs a Stable Diffusion backbone .*, not GaussianMixture"):
        LoRAScore(bb, Particles(n_particles=4))
