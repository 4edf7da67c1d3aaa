"""Shared parts of every estimator (DESIGN.md "Interfaces", METHODS.md "Conventions").

A ``Guidance`` maps a render in backbone space ``x`` (B, ...) to ``G`` shaped like
``x``; the trainer descends ``0.5 ||x - sg(x - G)||^2`` so that ``dL/dx = G``.
The base class owns the backbone, the text conditioning, the timestep schedule,
the weighting ``w(t)``, the CFG scale and the per-step random generators; methods
with a second score model get ``self.psi`` and fit it in ``update``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from src.cameras import ViewBatch
from src.diffusion import add_noise, alpha_sigma, bcast, weighting
from src.guidance import noise


@dataclass
class GuidanceOutput:
    grad: Tensor  # G, shaped like x, detached
    t: Tensor  # (B,) long
    logs: dict = field(default_factory=dict)


def step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    """A generator that depends only on (seed, step, stream): resume-exact randomness."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + step) * 31 + stream) % (2**63))


class Guidance(nn.Module):
    #: True for methods that need psi (built from ``score_model``)
    uses_score_model = False

    def __init__(
        self,
        backbone,
        schedule,
        prompt: str,
        negative_prompt: str = "",
        scale: float = 7.5,
        weighting: str = "sds",
        view_dependent: bool = False,
        seed: int = 0,
        representation=None,
        reward=None,
        score_model: dict | None = None,
    ):
        super().__init__()
        if scale < 1.0:
            raise ValueError(
                f"guidance.scale must be >= 1 (diffusers CFG convention, 1 = no guidance), got {scale}"
            )
        # Frozen, shared objects are plain attributes, not submodules: the guidance's
        # state_dict (checkpoints) then holds psi and method state only, never the prior.
        object.__setattr__(self, "backbone", backbone)
        object.__setattr__(self, "reward", reward)
        self.schedule = schedule
        self.prompt, self.scale, self.weighting, self.seed = prompt, float(scale), weighting, seed
        self.cond = backbone.conditioning(prompt, negative_prompt, view_dependent)
        self.psi = None
        if self.uses_score_model:
            from src.scoremodels import build_score_model

            self.psi = build_score_model(score_model or {}, backbone, representation)
            # psi is trained on the plain prompt (view-dependent prompting off for psi, ESD)
            self.psi_emb = backbone.embed(prompt)

    # --- shared parts ---------------------------------------------------------
    @property
    def abar(self) -> Tensor:
        return self.backbone.alphas_cumprod

    def rng(self, step: int, stream: int = 0) -> torch.Generator:
        return step_generator(self.seed, step, stream)

    def timesteps(self, step: int, batch: int) -> Tensor:
        return self.schedule.sample(step, batch, self.rng(step, stream=1))

    def perturb(self, x: Tensor, step: int, eps: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """The common start of every estimator: (t, eps, x_t = alpha_t x + sigma_t eps).

        eps defaults to fresh N(0, I) noise; x_t keeps x's graph (SIM differentiates it)."""
        t = self.timesteps(step, x.shape[0]).to(x.device)
        eps = noise.fresh(x, self.rng(step)) if eps is None else eps
        return t, eps, add_noise(x, eps, self.abar, t)

    def w(self, t: Tensor, like: Tensor) -> Tensor:
        alpha, sigma = alpha_sigma(self.abar, t)
        return bcast(weighting(self.weighting, alpha, sigma), like)

    def text(self, views: ViewBatch) -> tuple[Tensor, Tensor]:
        """Per-sample (cond, null) embeddings for the views' view prompts."""
        emb = self.cond.select(views.view_idx)
        return emb, self.cond.null(emb.shape[0])

    def psi_eps(self, x_t: Tensor, t: Tensor, cam: Tensor | None) -> Tensor:
        emb = self.psi_emb.unsqueeze(0).expand(x_t.shape[0], *self.psi_emb.shape)
        return self.psi.eps(x_t, t, cam, emb)

    # --- the estimator --------------------------------------------------------
    def forward(self, x: Tensor, views: ViewBatch, step: int, out=None) -> GuidanceOutput:
        raise NotImplementedError

    def update(self, x: Tensor, views: ViewBatch, step: int) -> dict[str, float]:
        """After the generator step: one psi step (VSD, ESD, SIM); no-op otherwise."""
        if self.psi is None:
            return {}
        emb = self.psi_emb.unsqueeze(0).expand(x.shape[0], *self.psi_emb.shape)
        return self.psi.fit_step(x.detach(), views, self.rng(step, stream=2), emb)
