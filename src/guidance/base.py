"""Shared parts of every estimator (DESIGN.md "Interfaces", docs/methods.md "Conventions").

A ``Guidance`` maps a render in backbone space ``x`` (B, ...) to ``G`` shaped like
``x``; the trainer descends ``0.5 ||x - sg(x - G)||^2`` so that ``dL/dx = G``.
The base class owns the backbone, the text conditioning, the timestep schedule,
the weighting ``w(t)``, the CFG scale and the per-step random generators;
``ScoreModelGuidance`` adds psi (the ``score_model`` group) and fits it in ``update``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from src import checks, rng
from src.cameras import ViewBatch
from src.diffusion import WEIGHTINGS, add_noise, alpha_sigma, bcast, weighting
from src.guidance import noise
from src.modules import hold


@dataclass
class GuidanceOutput:
    grad: Tensor  # G, shaped like x, detached
    t: Tensor  # (B,) long
    logs: dict = field(default_factory=dict)


class Guidance(checks.Configurable, nn.Module):
    #: the arguments the trainer passes at build time (never config keys)
    injected = ("backbone", "schedule", "prompt", "negative_prompt", "seed", "representation", "reward",
                "score_model")
    #: True for methods that need psi (ScoreModelGuidance)
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
        score_model: Callable | None = None,
    ):
        super().__init__()
        # Frozen, shared objects are held, not registered: the guidance's state_dict
        # (checkpoints) then holds psi and method state only, never the prior.
        hold(self, "backbone", backbone)
        hold(self, "reward", reward)
        self.schedule = schedule
        self.prompt, self.scale, self.weighting, self.seed = prompt, float(scale), weighting, seed
        self.cond = backbone.conditioning(prompt, negative_prompt, view_dependent)
        self.psi = None  # the score model of the renders (ScoreModelGuidance); None without one

    @classmethod
    def check_config(cls, cfg, key):
        if "scale" in cfg:
            checks.number(cfg, "scale", f"{key}.scale", lo=1.0)
            # (diffusers CFG convention; threestudio's guidance_scale g is s = g + 1)
        checks.choice(cfg, "weighting", f"{key}.weighting", WEIGHTINGS)

    # --- shared parts ---------------------------------------------------------
    @property
    def abar(self) -> Tensor:
        return self.backbone.alphas_cumprod

    def rng(self, step: int, stream: rng.Stream) -> torch.Generator:
        """The generator of this run's ``stream`` at ``step`` (src/rng.py)."""
        return rng.generator(self.seed, stream, step)

    def timesteps(self, step: int, batch: int) -> Tensor:
        return self.schedule.sample(step, batch, self.rng(step, rng.Stream.TIMESTEP))

    def perturb(self, x: Tensor, step: int, eps: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """The common start of every estimator: (t, eps, x_t = alpha_t x + sigma_t eps).

        eps defaults to fresh N(0, I) noise; x_t keeps x's graph (SIM differentiates it)."""
        t = self.timesteps(step, x.shape[0]).to(x.device)
        eps = noise.fresh(x, self.rng(step, rng.Stream.NOISE)) if eps is None else eps
        return t, eps, add_noise(x, eps, self.abar, t)

    def w(self, t: Tensor, like: Tensor) -> Tensor:
        alpha, sigma = alpha_sigma(self.abar, t)
        return bcast(weighting(self.weighting, alpha, sigma), like)

    def text(self, views: ViewBatch) -> tuple[Tensor, Tensor]:
        """Per-sample (cond, null) embeddings for the views' view prompts (refined by the camera
        where the backbone's prior knows cameras: ShapesWorld's ``view_conditioning=camera``)."""
        emb = self.backbone.condition_on_views(self.cond.select(views.view_idx), views)
        return emb, self.backbone.condition_on_views(self.cond.null(emb.shape[0]), views, null=True)

    # --- the estimator --------------------------------------------------------
    def forward(self, x: Tensor, views: ViewBatch, step: int, out=None) -> GuidanceOutput:
        raise NotImplementedError

    def update(self, x: Tensor, views: ViewBatch, step: int) -> dict[str, float]:
        """After the generator step: one psi step (ScoreModelGuidance); no-op otherwise."""
        return {}


class ScoreModelGuidance(Guidance):
    """An estimator with psi, the score model of the rendered distribution (VSD, ESD, SIM).

    ``score_model`` is the ``score_model`` group's partial constructor; psi is trained on the
    plain prompt (view-dependent prompting off for psi, ESD) with camera dropout ``p_drop``.
    """

    uses_score_model = True

    def __init__(self, *args, p_drop: float = 0.1, score_model: Callable | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if score_model is None:
            raise ValueError(f"{type(self).__name__} needs psi: a score_model (conf/score_model/)")
        self.p_drop = float(p_drop)
        self.psi = score_model(backbone=self.backbone, representation=kwargs.get("representation"))
        self.psi_emb = self.backbone.embed(self.prompt)

    @classmethod
    def check_config(cls, cfg, key):
        super().check_config(cfg, key)
        checks.probability(cfg, "p_drop", f"{key}.p_drop")

    def psi_text(self, batch: int) -> Tensor:
        """(B, *E) copies of psi's text embedding (the plain prompt)."""
        return self.psi_emb.unsqueeze(0).expand(batch, *self.psi_emb.shape)

    def psi_eps(self, x_t: Tensor, t: Tensor, cam: Tensor | None) -> Tensor:
        """e_psi(x_t; y, c) alone (diagnostics: scripts/sim_weighting_profile.py)."""
        return self.psi.eps(x_t, t, cam, self.psi_text(x_t.shape[0]))

    def prior_and_psi(self, x_t: Tensor, t: Tensor, views: ViewBatch,
                      cams: list[Tensor | None]) -> tuple[Tensor, list[Tensor]]:
        """(e_s(x_t; y_c), [e_psi(x_t; y, c) for c in cams]): the prior's CFG prediction on the
        views' prompts and psi's on the plain prompt, in one backbone call (``eps_with_psi``: one
        network call where the prior and psi can share it)."""
        emb, null = self.text(views)
        return self.backbone.eps_with_psi(x_t, t, emb, null, self.scale, self.psi, self.psi_text(x_t.shape[0]), cams)

    def update(self, x: Tensor, views: ViewBatch, step: int) -> dict[str, float]:
        return self.psi.fit_step(x.detach(), views, self.rng(step, rng.Stream.PSI), self.psi_text(x.shape[0]),
                                 self.p_drop)
