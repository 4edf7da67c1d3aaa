"""Closed-form psi for the affine toy (ESD App. B, Eq. 65).

The rendered distribution of ``x = b + A c`` is N(b, A A^T), so
``grad log q_t(x_t) = (alpha^2 A A^T + sigma^2 I)^-1 (alpha b - x_t)`` and
``grad log q_t(x_t | c) = (alpha (b + A c) - x_t) / sigma^2``; psi returns
``e = -sigma * score``. It reads the representation's current (b, A) *detached*
(``Representation.gaussian``, which the guidance hands over with the representation: psi
imports no representation): psi's parameters are frozen inside the estimator, as a network's
would be, while gradients may still flow through its input x_t (SIM).
"""

from __future__ import annotations

import torch
from torch import Tensor

from src.diffusion import alpha_sigma
from src.modules import hold
from src.scoremodels.base import ScoreModel


class AffineGaussianScore(ScoreModel):
    null_camera_is_zeros = False  # cam=None is the marginal q_t, not the code c = 0

    def __init__(self, backbone, representation):
        super().__init__(backbone.alphas_cumprod)
        if representation is None or representation.gaussian() is None:
            raise ValueError("score_model=analytic is the closed form of representation=affine "
                             f"(x = b + A c), not of {type(representation).__name__}")
        hold(self, "representation", representation)  # read, never in psi's state

    def score(self, x_t: Tensor, t: Tensor, cam: Tensor | None) -> Tensor:
        b, A = (v.detach().to(x_t.dtype) for v in self.representation.gaussian())
        alpha, sigma = (v.to(x_t.dtype)[:, None] for v in alpha_sigma(self.alphas_cumprod, t))
        if cam is None:
            eye = torch.eye(b.shape[0], dtype=x_t.dtype, device=x_t.device)
            C = alpha[..., None] ** 2 * (A @ A.T) + sigma[..., None] ** 2 * eye  # (B, D, D)
            return torch.linalg.solve(C, (alpha * b - x_t).unsqueeze(-1)).squeeze(-1)
        mean = alpha * (b + cam.to(x_t.dtype) @ A.T)
        return (mean - x_t) / sigma**2

    def eps(self, x_t, t, cam, emb=None):
        _, sigma = alpha_sigma(self.alphas_cumprod, t)
        return -sigma.to(x_t.dtype)[:, None] * self.score(x_t, t, cam)

    def fit_step(self, x, views, generator, emb=None, p_drop=0.0):
        return {}  # exact by construction
