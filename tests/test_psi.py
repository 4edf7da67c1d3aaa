"""psi starts as the prior (DESIGN.md "Interfaces"): e_psi = e(x_t; y) + a correction that is zero
at step 0, on every analytic prior (``from_prior: true``), as a LoRA on SD's UNet is (tests/test_sd.py)."""

import pytest
import torch

from src import rng
from src.api import compose
from src.build import build_components
from src.cameras import ViewBatch


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
