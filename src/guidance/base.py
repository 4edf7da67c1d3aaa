"""Shared parts of every estimator (DESIGN.md "Interfaces", METHODS.md "Conventions").

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

    def psi_eps(self, x_t: Tensor, t: Tensor, cam: Tensor | None) -> Tensor:
        emb = self.psi_emb.unsqueeze(0).expand(x_t.shape[0], *self.psi_emb.shape)
        return self.psi.eps(x_t, t, cam, emb)

    @property
    def fused(self) -> bool:
        """The fast path's one-call form is available: the backbone is in fast mode and psi can
        share a network call with the prior (LoRA on the prior's UNet)."""
        return bool(self.backbone.fast) and self.psi.supports_joint

    def prior_psi_eps(self, x_t: Tensor, t: Tensor, emb: Tensor, null: Tensor | None,
                      cams: list[Tensor | None], graph: bool = True) -> tuple[Tensor, Tensor | None, list[Tensor]]:
        """(e(x_t; y), e(x_t; null), [e_psi(x_t; y, c) for c in cams]) in ONE network call.

        x_t (B, ...), t (B,), emb / null (B, *E) (null=None: no null row); a camera None is the
        null camera. Rows: [cond, null, psi(c_1), ...], batch (2 + len(cams)) B. Keeps x_t's
        graph when it requires grad (SIM)."""
        B = x_t.shape[0]
        psi_emb = self.psi_emb.unsqueeze(0).expand(B, *self.psi_emb.shape).to(emb)
        zero = torch.zeros(B, self.psi.cam_dim, device=x_t.device)
        texts = [emb] + ([] if null is None else [null]) + [psi_emb] * len(cams)
        n_prior = len(texts) - len(cams)
        cam_rows = [zero] * n_prior + [zero if c is None else c.to(zero) for c in cams]
        psi_rows = torch.cat([torch.zeros(n_prior * B), torch.ones(len(cams) * B)]).to(x_t.device)
        n = len(texts)
        e = self.psi.joint_eps(torch.cat([x_t] * n), torch.cat([t] * n), torch.cat(texts), torch.cat(cam_rows),
                               psi_rows, graph=graph).split(B)
        return e[0], (None if null is None else e[1]), list(e[n_prior:])

    def update(self, x: Tensor, views: ViewBatch, step: int) -> dict[str, float]:
        emb = self.psi_emb.unsqueeze(0).expand(x.shape[0], *self.psi_emb.shape)
        return self.psi.fit_step(x.detach(), views, self.rng(step, rng.Stream.PSI), emb, self.p_drop)
