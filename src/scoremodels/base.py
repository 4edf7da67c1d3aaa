"""ScoreModel base: epsilon prediction e_psi(x_t; y, c) plus its online fitting rule.

The fitting rule is VSD's (METHODS.md): after each generator step, one denoising
score-matching step on fresh ``t' ~ U[t_min, t_max)`` and ``eps'``,
``|| e_psi(alpha_t' sg(x) + sigma_t' eps'; y, c~) - eps' ||^2`` with ``c~ = null``
with probability ``p_drop``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from src.cameras import ViewBatch
from src.diffusion import add_noise

SCORE_MODEL_KINDS = ("auto", "analytic", "mlp", "unet", "lora")


class ScoreModel(nn.Module):
    """Subclasses implement ``eps`` and build their parameters in ``__init__``.

    cam=None means camera-unconditional (the null camera, METHODS.md ``c = null``).
    """

    #: networks embed the null camera as zeros, so null and real cameras batch together
    null_camera_is_zeros = True

    def __init__(
        self,
        alphas_cumprod: Tensor,
        lr: float = 1e-3,
        p_drop: float = 0.1,
        t_min: float = 0.0,
        t_max: float = 1.0,
        steps_per_update: int = 1,
        weight_decay: float = 0.0,
    ):
        super().__init__()
        if not 0.0 <= p_drop <= 1.0:
            raise ValueError(f"score_model.p_drop must be in [0, 1], got {p_drop}")
        self.register_buffer("alphas_cumprod", alphas_cumprod.clone(), persistent=False)
        self.lr, self.p_drop, self.weight_decay = lr, p_drop, weight_decay
        self.t_min, self.t_max = t_min, t_max
        self.steps_per_update = steps_per_update
        self._optimizer: torch.optim.Optimizer | None = None

    # --- prediction -----------------------------------------------------------
    def eps(self, x_t: Tensor, t: Tensor, cam: Tensor | None, emb: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    # --- fitting --------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        params = self.trainable_parameters()
        if self._optimizer is None and params:
            self._optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        return self._optimizer

    def dsm_loss(
        self, x: Tensor, views: ViewBatch, generator: torch.Generator, emb: Tensor | None = None
    ) -> Tensor:
        """Denoising score matching on detached renders x (B, ...)."""
        B, T = x.shape[0], self.alphas_cumprod.shape[0]
        lo, hi = int(self.t_min * T), max(int(self.t_max * T), int(self.t_min * T) + 1)
        t = torch.randint(lo, hi, (B,), generator=generator).to(x.device)
        eps = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        x_t = add_noise(x.detach(), eps, self.alphas_cumprod, t)
        cam = views.cam.to(x.device, x.dtype)
        drop = (torch.rand(B, generator=generator) < self.p_drop).to(x.device)
        cam = torch.where(drop[:, None], torch.zeros_like(cam), cam)
        pred = self.eps(x_t, t, cam, emb)
        return ((pred - eps) ** 2).flatten(1).sum(1).mean()

    def fit_step(
        self, x: Tensor, views: ViewBatch, generator: torch.Generator, emb: Tensor | None = None
    ) -> dict[str, float]:
        opt = self.optimizer
        if opt is None:
            return {}
        total = 0.0
        for _ in range(self.steps_per_update):
            opt.zero_grad(set_to_none=True)
            loss = self.dsm_loss(x, views, generator, emb)
            loss.backward()
            opt.step()
            total += float(loss.detach())
        return {"psi_loss": total / self.steps_per_update}

    # the optimizer's state travels with the module's state_dict (checkpoints)
    def get_extra_state(self):
        return {"optimizer": None if self._optimizer is None else self._optimizer.state_dict()}

    def set_extra_state(self, state) -> None:
        if state and state.get("optimizer") is not None and self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])


def build_score_model(cfg, backbone, representation) -> ScoreModel:
    """Build psi from ``guidance.score_model`` (a dict with ``kind`` and kind options)."""
    cfg = {k: v for k, v in dict(cfg).items() if v is not None}  # null = the kind's default
    kind = cfg.pop("kind", "auto")
    if kind not in SCORE_MODEL_KINDS:
        raise ValueError(
            f"guidance.score_model.kind={kind!r} is unknown; valid: {', '.join(SCORE_MODEL_KINDS)}"
        )
    if kind == "auto":
        kind = getattr(representation, "default_score_model", None) or backbone.default_score_model
    abar = backbone.alphas_cumprod
    if kind == "analytic":
        from src.scoremodels.analytic import AffineGaussianScore

        return AffineGaussianScore(abar, representation, **cfg)
    if kind == "mlp":
        from src.scoremodels.mlp import MLPScore

        return MLPScore(abar, dim=representation.dim, cam_dim=representation.cam_dim, **cfg)
    if kind == "unet":
        from src.scoremodels.unet import UNetScore

        return UNetScore.for_backbone(backbone, representation, **cfg)
    from src.scoremodels.lora import LoRAScore

    return LoRAScore.for_backbone(backbone, representation, **cfg)
