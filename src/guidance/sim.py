"""Score implicit matching / Dive3D (papers/dive3d_sim.txt Eq. 15-16, App. A; docs/methods.md "SIM").

Divergence D = int w(t) E_{x_t ~ q_t} d(s_p(x_t) - s_q(x_t)) dt, d = ||u||^2 (l2, Dive3D)
or sqrt(||u||^2 + c^2) - c (pseudo-Huber, SIM paper); s = -e / sigma; s_q from psi.
Dive3D's objective combines three such terms:
  (1 + gamma) D(s_p(.|y), s_q) - gamma D(s_p(.), s_q) + reward_weight D(grad_{x_t} r(y, x0hat), s_q).
Dive3D's gamma is the CFG scale s = 1 + gamma of every other method (docs/methods.md), so SIM's knob
is ``scale`` like theirs: one key, one convention (gamma = scale - 1).

Estimator (per term, psi and the prior frozen):
  L = + d'(y_t)^T (s_q(x_t) - grad log q_t(x_t | x)),  y_t = s_p(x_t) - s_q(x_t),
  x_t = alpha_t x + sigma_t eps, grad log q_t(x_t | x) = -eps / sigma_t,  G = w(t) dL/dx.
Note the sign against the paper's Eq. 24 (there the loss is stated for ascent).
With the ideal camera-conditioned psi of a 3D object (the point mass at the render x:
e_psi = (x_t - alpha_t x) / sigma_t), s_q - grad log q_t(x_t | x) = 0, the term through d''
vanishes, and G = -w alpha_t / sigma_t^2 d'(y), y = (eps - e_p) / sigma_t: SDS's direction
e_p - eps weighted 2 alpha_t / sigma_t^3 (l2), which reaches x only through psi's input Jacobian
-I / sigma_t^2 (tests/test_sim.py::test_sim_with_the_ideal_camera_psi_is_sds_reweighted). A
learned psi's Jacobian error goes straight into the step (src/studies/diagnostics/sim_weighting_profile.py).

``vsd_after`` (official code's choice, docs/methods.md): from this fraction of the run on, the step is
VSD's G = w(t) (e_s(x_t; y_c) - e_psi(x_t; y, c)) with the same psi (Dive3D's code runs SIM for
the first ~14k of 25k iterations, i.e. 0.56, and VSD after); null = SIM throughout (the paper).

psi's camera (``psi_camera``): Dive3D's psi is ProlificDreamer's camera-conditioned LoRA (App. A:
"exactly the same as ProlificDreamer"), so ``auto`` (default) conditions s_q on the camera
wherever the camera is a viewpoint (images and 3D), with the method's camera dropout ``p_drop``.
On the toys (``Representation.kind == "vector"``) the "camera" is the generator's own code
(affine) or particle index (particles): s_q(.|c) of a deterministic render makes the residual
vanish identically, so there psi is camera-unconditional and always trained so (p_drop = 1).
On ShapesWorld a camera-unconditional psi pulls every view toward the azimuth-averaged shading
(docs/findings.md, "SIM needed two changes"). Where in t the estimator puts its step, and how
much of its noise comes through psi's input Jacobian:
src/studies/diagnostics/sim_weighting_profile.py.

Which gradient path is unbiased (``grad_through``), settled on the affine-Gaussian toy
where D is closed form (tests/test_sim.py):
  - ``inputs`` (default, unbiased): gradient flows through x_t everywhere, i.e. into the
    inputs of both score networks and through d'(y_t). Its Monte-Carlo mean equals
    grad_theta D with the sampling distribution held at the current theta.
  - ``residual_only`` (cheaper, BIASED): y_t is detached, so no backward pass through the
    prior; only s_q's input carries gradient. On the toy it gets grad_b right but about
    half of grad_A. Offered for speed experiments only, clearly labelled.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from src import checks
from src.clock import RunLength
from src.diffusion import alpha_sigma, bcast, x0_from_eps
from src.guidance.base import GuidanceOutput, ScoreModelGuidance

SIM_DISTANCES = ("l2", "pseudo_huber")
SIM_GRAD_PATHS = ("inputs", "residual_only")


def distance_grad(u: Tensor, kind: str, c: float) -> Tensor:
    """d'(u) per sample for d(u) = ||u||^2 or sqrt(||u||^2 + c^2) - c; u (B, ...)."""
    if kind == "l2":
        return 2.0 * u
    norm2 = (u * u).flatten(1).sum(1)
    return u / bcast((norm2 + c * c).sqrt(), u)


class SIM(ScoreModelGuidance):
    def __init__(self, *args, distance: str = "l2", huber_c: float = 1.0, reward_weight: float = 0.0,
                 grad_through: str = "inputs", psi_camera: bool | str = "auto",
                 vsd_after: float | None = None, run_length: RunLength | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if psi_camera == "auto":
            rep = kwargs.get("representation")
            psi_camera = rep is None or rep.kind != "vector"
        if not psi_camera:
            self.p_drop = 1.0  # s_q is only ever asked without a camera: train it that way
        self.vsd_after = None if vsd_after is None else float(vsd_after)
        # the step from which the step is VSD's: a fraction of the run's length (src/clock.py)
        self.vsd_from = None if vsd_after is None else self.vsd_after * run_length.steps("vsd_after")
        self.gamma = self.scale - 1.0  # Dive3D's gamma (s = 1 + gamma)
        self.distance, self.huber_c = distance, float(huber_c)
        self.reward_weight, self.grad_through, self.psi_camera = float(reward_weight), grad_through, bool(psi_camera)

    @classmethod
    def check_config(cls, cfg, key):
        super().check_config(cfg, key)
        checks.choice(cfg, "distance", f"{key}.distance", SIM_DISTANCES)
        checks.choice(cfg, "grad_through", f"{key}.grad_through", SIM_GRAD_PATHS)
        if cfg.get("psi_camera") is not None:
            checks.choice(cfg, "psi_camera", f"{key}.psi_camera", ("auto", True, False))
        checks.number(cfg, "huber_c", f"{key}.huber_c", lo=0.0, lo_open=True)
        checks.number(cfg, "reward_weight", f"{key}.reward_weight")
        if cfg.get("vsd_after") is not None:
            checks.probability(cfg, "vsd_after", f"{key}.vsd_after")

    @classmethod
    def check_composition(cls, cfg, key, root):
        checks.require(float(cfg.get("reward_weight", 0.0)) == 0.0 or root.reward.get("_target_") is not None,
                       f"{key}.reward_weight", cfg.get("reward_weight"),
                       "a reward term needs a reward model: set reward=<name> (conf/reward/), not none")

    def prior_scores(self, x_t: Tensor, t: Tensor, views,
                     pair: tuple[Tensor, Tensor] | None = None) -> list[tuple[float, Tensor]]:
        """[(coefficient, s_p^i(x_t))] of the objective's terms, differentiable in x_t.
        pair: (e(x_t; y), e(x_t; null)) when already computed (``forward``'s one call with psi)."""
        emb, null = self.text(views)
        _, sigma = alpha_sigma(self.abar, t)
        sig = bcast(sigma, x_t)
        e_c, e_u = self.backbone.eps_pair(x_t, t, emb, null) if pair is None else pair
        terms = []
        if self.distance == "l2":
            # d' is linear: (1+gamma) d'(s_y - s_q) - gamma d'(s_0 - s_q) = d'(s_cfg - s_q)
            terms.append((1.0, -(e_u + self.scale * (e_c - e_u)) / sig))
        else:
            terms += [(1.0 + self.gamma, -e_c / sig)]
            if self.gamma > 0:
                terms.append((-self.gamma, -e_u / sig))
        if self.reward_weight != 0.0:
            x0 = x0_from_eps(x_t, e_c, self.abar, t)
            r = self.reward(x0, self.prompt).sum()
            s_r = torch.autograd.grad(r, x_t, create_graph=self.grad_through == "inputs")[0]
            terms.append((self.reward_weight, s_r))
        return terms

    def vsd_step(self, step: int) -> bool:
        return self.vsd_from is not None and step >= self.vsd_from

    def psi_cam(self, views) -> Tensor | None:
        return views.cam if self.psi_camera else None

    @torch.no_grad()
    def vsd_residual(self, x_t: Tensor, t: Tensor, views) -> Tensor:
        """e_s(x_t; y_c) - e_psi(x_t; y, c): the VSD step of ``vsd_after``, before w(t)."""
        e, (e_psi,) = self.prior_and_psi(x_t, t, views, [self.psi_cam(views)])
        return e - e_psi

    def surrogate(self, x_t: Tensor, t: Tensor, eps: Tensor, views, e_psi: Tensor,
                  pair: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """L of the module docstring, summed over the objective's terms; differentiable in x_t
        through e_psi and the prior (``grad_through``)."""
        _, sigma = alpha_sigma(self.abar, t)
        s_q = -e_psi / bcast(sigma, x_t)
        target = s_q + eps / bcast(sigma, x_t)  # s_q(x_t) - grad log q_t(x_t | x)
        L = x_t.new_zeros(())
        for coef, s_p in self.prior_scores(x_t, t, views, pair):
            y = s_p - s_q
            if self.grad_through == "residual_only":
                y = y.detach()
            L = L + coef * (distance_grad(y, self.distance, self.huber_c) * target).sum()
        return L

    def forward(self, x, views, step, out=None):
        cam = self.psi_cam(views)
        if self.vsd_step(step):  # the official code's second phase
            x = x.detach()
            t, _, x_t = self.perturb(x, step)
            return GuidanceOutput(grad=self.w(t, x) * self.vsd_residual(x_t, t, views), t=t)
        # the reward's score differentiated through the inputs is a double backward through the
        # UNet, VAE decoder and reward model: the math attention kernel is twice differentiable,
        # the fused ones (flash, memory-efficient, the CPU's) are not (found timing Dive3D-SD,
        # scripts/bench_objects.py)
        second_order = self.reward_weight != 0.0 and self.grad_through == "inputs"
        with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH) if second_order else nullcontext():
            x_ = x.detach().requires_grad_(True)
            t, eps, x_t = self.perturb(x_, step)
            # the prior's pair and psi, both differentiated through x_t (one UNet call where the
            # backbone can); a reward term needs a double backward, so its call stays out of graphs
            e_c, e_u, (e_psi,) = self.backbone.eps_pair_with_psi(
                x_t, t, *self.text(views), self.psi, self.psi_text(x_t.shape[0]), [cam],
                graph=self.reward_weight == 0.0)
            grad = torch.autograd.grad(self.surrogate(x_t, t, eps, views, e_psi, (e_c, e_u)), x_)[0]
        return GuidanceOutput(grad=self.w(t, x) * grad.detach(), t=t)
