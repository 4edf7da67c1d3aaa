"""Analytic Gaussian-mixture prior with tagged components (``backbone=mog2d`` and presets).

p_0(x | y) = sum_{k in y} pi_k N(x; mu_k, Sigma_k) over the components whose tags contain
the prompt's word (the null prompt "" selects all). Noised, each component stays Gaussian,
N(alpha mu_k, alpha^2 Sigma_k + sigma^2 I), so the score of p_t and hence the ideal
epsilon prediction ``e = -sigma * grad log p_t`` are closed form. The schedule is Stable
Diffusion's so timesteps and weights carry over (DESIGN.md "analytic backbones").

x may have any trailing shape; it is flattened to (B, D).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from src import checks
from src.backbones.base import Backbone
from src.diffusion import alpha_sigma, sd_alphas_cumprod

# A particle counts as having found mode k when it lies within this many standard
# deviations (Mahalanobis distance) of mu_k: 3 sigma holds ~99% of a 2-D Gaussian's mass.
MODE_RADIUS_STD = 3.0


class GaussianMixture(Backbone):
    space = "vector"
    supported_representations = ("vector",)

    def __init__(
        self,
        means: list[list[float]],
        covs: list,
        weights: list[float] | None = None,
        tags: list[list[str]] | None = None,
        default_prompt: str = "",
        name: str = "mog",
    ):
        super().__init__()
        mu = torch.tensor(means, dtype=torch.float64)
        K, D = mu.shape
        cov = torch.stack([self._as_cov(c, D) for c in covs])
        if cov.shape[0] != K:
            raise ValueError(f"backbone.covs has {cov.shape[0]} entries for {K} means")
        w = torch.full((K,), 1.0 / K, dtype=torch.float64) if weights is None else torch.tensor(weights, dtype=torch.float64)
        if (w <= 0).any():
            raise ValueError("backbone.weights must be positive")
        self.tags = [list(t) for t in (tags or [[] for _ in range(K)])]
        if len(self.tags) != K:
            raise ValueError(f"backbone.tags has {len(self.tags)} entries for {K} components")
        self.vocabulary = sorted({t for ts in self.tags for t in ts})
        self.name, self.default_prompt = name, default_prompt
        self.register_buffer("means", mu)
        self.register_buffer("covs", cov)
        self.register_buffer("log_weights", (w / w.sum()).log())
        self.register_buffer("alphas_cumprod", sd_alphas_cumprod())

    @staticmethod
    def _as_cov(c, D: int) -> Tensor:
        c = torch.as_tensor(c, dtype=torch.float64)
        if c.ndim == 0:
            return c * torch.eye(D, dtype=torch.float64)
        if c.ndim == 1:
            return torch.diag(c)
        return c

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def x_shape(self, height=None, width=None) -> tuple[int, ...]:
        return (self.dim,)

    # --- text -------------------------------------------------------------------
    def embed(self, text: str) -> Tensor:
        """A (K,) 0/1 mask of the components the prompt selects."""
        word = text.strip()
        if word == "":
            return torch.ones(len(self.tags), dtype=torch.float64)
        self._check_word(text, self.vocabulary, self.name)
        return torch.tensor([float(word in ts) for ts in self.tags], dtype=torch.float64)

    @classmethod
    def check_prompt(cls, cfg, prompt):
        tags = cfg.get("tags") or []
        cls._check_word(prompt, sorted({t for ts in tags for t in ts}), cfg.get("name", "mog"))

    @staticmethod
    def _check_word(text: str, vocabulary: list[str], name: str) -> None:
        if text.strip() and text.strip() not in vocabulary:
            raise ValueError(
                f"prompt {checks.echo(text)} is outside the {name} backbone's vocabulary; "
                f"valid prompts: '' (all components), {', '.join(repr(v) for v in vocabulary)}"
            )

    def conditioning(self, prompt: str, negative: str = "", view_dependent: bool = False):
        # no views in R^D: view-dependent prompting is a no-op here
        return super().conditioning(prompt, negative, view_dependent=False)

    # --- the closed-form prior -------------------------------------------------------
    def noised_components(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample noised means (B, K, D) and covariances (B, K, D, D)."""
        alpha, sigma = alpha_sigma(self.alphas_cumprod, t)
        eye = torch.eye(self.dim, dtype=torch.float64, device=t.device)
        m = alpha[:, None, None] * self.means
        C = alpha[:, None, None, None] ** 2 * self.covs + sigma[:, None, None, None] ** 2 * eye
        return m, C

    def log_prob_t(self, x_t: Tensor, t: Tensor, emb: Tensor) -> Tensor:
        """log p_t(x_t | y), (B,). Differentiable in x_t (used by tests)."""
        x = x_t.reshape(x_t.shape[0], -1).double()
        m, C = self.noised_components(t)
        comp = torch.distributions.MultivariateNormal(m, covariance_matrix=C).log_prob(x[:, None, :])
        logw = self.log_weights + torch.log(emb.double().clamp_min(1e-300))
        return torch.logsumexp(comp + logw, dim=1)

    def score(self, x_t: Tensor, t: Tensor, emb: Tensor) -> Tensor:
        """grad log p_t(x_t | y), (B, D) float64: responsibilities times component scores."""
        x = x_t.reshape(x_t.shape[0], -1).double()
        m, C = self.noised_components(t)
        diff = m - x[:, None, :]  # (B, K, D)
        sol = torch.linalg.solve(C, diff.unsqueeze(-1)).squeeze(-1)  # C^-1 (m - x)
        logdet = torch.logdet(C)
        logp = -0.5 * ((diff * sol).sum(-1) + logdet + self.dim * math.log(2 * math.pi))
        logw = self.log_weights + torch.log(emb.double().clamp_min(1e-300))
        r = torch.softmax(logp + logw, dim=1)  # (B, K)
        return (r[..., None] * sol).sum(1)

    def predict_eps(self, x_t: Tensor, t: Tensor, emb: Tensor) -> Tensor:
        _, sigma = alpha_sigma(self.alphas_cumprod, t)
        e = -sigma[:, None] * self.score(x_t, t, emb)
        return e.reshape(x_t.shape).to(x_t.dtype)

    # --- exact metrics (the true distribution is known) -------------------------------
    @torch.no_grad()
    def evaluate(self, samples: Tensor, views=None, prompt: str = "") -> dict[str, float]:
        """mode_coverage / precision over the prompt's components; covariance error for one."""
        x = samples.reshape(samples.shape[0], -1).double()
        sel = self.embed(prompt).bool()
        mu, cov = self.means[sel], self.covs[sel]
        d = x[:, None, :] - mu[None]  # (N, K', D)
        maha = (d * torch.linalg.solve(cov, d.unsqueeze(-1)).squeeze(-1)).sum(-1).sqrt()
        near = maha < MODE_RADIUS_STD  # (N, K')
        hit = near.any(0)
        out = {
            "mode_coverage": float(hit.float().mean()),
            "modes_found": float(hit.sum()),
            "n_modes": float(sel.sum()),
            "precision": float(near.any(1).float().mean()),
        }
        if mu.shape[0] == 1:  # a single Gaussian: ESD App. B's covariance recovery
            fit = torch.cov(x.T).reshape(self.dim, self.dim)
            out["cov_rel_error"] = float(torch.linalg.norm(fit - cov[0]) / torch.linalg.norm(cov[0]))
            out["cov_trace_ratio"] = float(torch.trace(fit) / torch.trace(cov[0]))
            out["mean_error"] = float(torch.linalg.norm(x.mean(0) - mu[0]))
        return out
